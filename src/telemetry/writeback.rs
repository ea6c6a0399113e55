//! Starting the writeback of a log file as it grows.
//!
//! When stderr is a regular file (`switchyard run 2>>gateway.log`), an access log at info
//! writes several MB/s. Left to itself the kernel lets that pile up as dirty pages and writes
//! them back in batches of hundreds of MB; an `fdatasync` of the store on the same ext4 disk
//! then waits behind such a batch (the journal commit takes the log's new blocks with it), and
//! an admin write that is normally 5 ms takes 0.1–1 s. Databases avoid this by asking for the
//! writeback of each few MB they append (RocksDB's `bytes_per_sync`); so does the log flusher.
//! `SYNC_FILE_RANGE_WRITE` only starts the writeback: it does not wait for the disk.
//!
//! Journald, a pipe or a terminal behind stderr need none of this, and get none.

use std::os::fd::RawFd;

/// Writeback is started once this much was written since the last start.
pub const BYTES_PER_SYNC: u64 = 1 << 20;

/// The part of a growing file whose writeback is still to be started.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// Where the last started range ended.
    synced_to: u64,
}

impl Pending {
    /// The range `(offset, len)` to start now that the file's end is at `end`, if at least
    /// `BYTES_PER_SYNC` waits. A file that shrank (truncated by a log rotation) starts over.
    pub fn due(&mut self, end: u64) -> Option<(u64, u64)> {
        if end < self.synced_to {
            self.synced_to = 0;
        }
        let len = end - self.synced_to;
        if len < BYTES_PER_SYNC {
            return None;
        }
        let from = std::mem::replace(&mut self.synced_to, end);
        Some((from, len))
    }
}

/// A regular file's writeback, started range by range.
pub struct Writeback {
    fd: RawFd,
    pending: Pending,
}

impl Writeback {
    /// For `fd` if it is a regular file; `None` for pipes, sockets, terminals and `/dev/null`.
    pub fn of(fd: RawFd) -> Option<Writeback> {
        // SAFETY: `fstat` writes into the zeroed struct it is given and reads nothing else.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let regular = unsafe { libc::fstat(fd, &mut st) } == 0
            && (st.st_mode & libc::S_IFMT) == libc::S_IFREG;
        regular.then_some(Writeback {
            fd,
            pending: Pending::default(),
        })
    }

    /// Call after each write: starts the writeback of what was written since the last start,
    /// once there is enough of it. Returns the range started.
    pub fn wrote(&mut self) -> Option<(u64, u64)> {
        // SAFETY: plain system calls on a descriptor this process owns; no memory is shared.
        let end = unsafe { libc::lseek(self.fd, 0, libc::SEEK_CUR) };
        let (from, len) = self.pending.due(u64::try_from(end).ok()?)?;
        let started = unsafe {
            libc::sync_file_range(
                self.fd,
                from as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        } == 0;
        started.then_some((from, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    #[test]
    fn ranges_start_per_megabyte_and_after_a_truncation() {
        let mut p = Pending::default();
        assert_eq!(p.due(BYTES_PER_SYNC - 1), None);
        assert_eq!(p.due(BYTES_PER_SYNC + 10), Some((0, BYTES_PER_SYNC + 10)));
        assert_eq!(p.due(BYTES_PER_SYNC + 20), None);
        let end = 2 * BYTES_PER_SYNC + 10;
        assert_eq!(p.due(end), Some((BYTES_PER_SYNC + 10, BYTES_PER_SYNC)));
        // copytruncate rotation: the file starts again at 0.
        assert_eq!(p.due(100), None);
        assert_eq!(p.due(BYTES_PER_SYNC), Some((0, BYTES_PER_SYNC)));
    }

    #[test]
    fn a_regular_file_gets_its_writeback_started_and_a_pipe_is_left_alone() {
        let mut file = tempfile::tempfile().unwrap();
        let mut wb = Writeback::of(file.as_raw_fd()).expect("a regular file");
        file.write_all(&vec![b'x'; 4096]).unwrap();
        assert_eq!(wb.wrote(), None, "less than BYTES_PER_SYNC waits");
        file.write_all(&vec![b'y'; BYTES_PER_SYNC as usize])
            .unwrap();
        assert_eq!(wb.wrote(), Some((0, BYTES_PER_SYNC + 4096)));

        let mut fds = [0; 2];
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        assert!(Writeback::of(fds[1]).is_none());
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }
}
