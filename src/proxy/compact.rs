//! Headers an open answer holds until it ends, in maps with room for exactly their fields.
//!
//! Pingora keeps the response header it wrote to the client, and the request header it wrote
//! upstream, for as long as the answer lasts. A header map grown insert by insert has room for
//! up to twice its fields (~0.1 KiB each, and 12 from the start for a request header): for an
//! open stream that is ~1.5 KiB more than its fields need. A clone has room for exactly its
//! fields, so a stream's headers are cloned once, before they are written.

use http::header;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::date::get_cached_date;

/// `resp` as a stream keeps it. The fields Pingora sets as it writes the header (`date`, and
/// `connection` over HTTP/1.1, where it writes `keep-alive` or `close` over ours) are set
/// first, so its inserts replace them instead of growing the clone.
pub fn response(
    mut resp: Box<ResponseHeader>,
    http2: bool,
) -> pingora::Result<Box<ResponseHeader>> {
    resp.insert_header(header::DATE, get_cached_date())?;
    if !http2 {
        resp.insert_header(header::CONNECTION, "keep-alive")?;
    }
    Ok(Box::new((*resp).clone()))
}

/// `req` as a streamed answer's connection keeps it.
pub fn request(req: RequestHeader) -> RequestHeader {
    req.clone()
}
