//! Rate limits: token buckets per (policy, key) for requests and for tokens per minute.
//!
//! A bucket holds `burst` (default: the per-minute limit) and refills at limit/60 per second.
//! A request takes one from the request bucket; the token bucket admits a request while it is
//! not empty and is charged the upstream's reported usage when the response ends, so it can go
//! into debt and then holds requests back until it has refilled. Buckets live in a sharded map
//! with a lock per bucket; the clock is injectable so tests need no sleeps.

use crate::entities::policy::RateLimitConfig;
use crate::hash::DashMap;
use http::{HeaderName, HeaderValue};
use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub trait Clock: Send + Sync {
    /// Time since an arbitrary fixed point.
    fn now(&self) -> Duration;
}

pub struct SystemClock(Instant);

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock(Instant::now())
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Dim {
    Requests,
    Tokens,
}

#[derive(Debug)]
struct Bucket {
    level: f64,
    at: Duration,
}

/// A bucket's key: (policy id, bucket key, dimension).
type BucketId = (String, String, Dim);

/// A bucket's key as looked up: borrowed, so a check allocates nothing once its bucket exists.
/// It hashes and compares as the owned key does (`String` hashes as `str`).
trait BucketRef {
    fn parts(&self) -> (&str, &str, Dim);
}

impl BucketRef for BucketId {
    fn parts(&self) -> (&str, &str, Dim) {
        (&self.0, &self.1, self.2)
    }
}

impl BucketRef for (&str, &str, Dim) {
    fn parts(&self) -> (&str, &str, Dim) {
        *self
    }
}

impl<'a> Borrow<dyn BucketRef + 'a> for BucketId {
    fn borrow(&self) -> &(dyn BucketRef + 'a) {
        self
    }
}

impl Hash for dyn BucketRef + '_ {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.parts().hash(h)
    }
}

impl PartialEq for dyn BucketRef + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn BucketRef + '_ {}

/// The `x-ratelimit-*` names of one dimension: limit, remaining, reset.
type Names = [HeaderName; 3];
static REQUEST_HEADERS: Names = [
    HeaderName::from_static("x-ratelimit-limit-requests"),
    HeaderName::from_static("x-ratelimit-remaining-requests"),
    HeaderName::from_static("x-ratelimit-reset-requests"),
];
static TOKEN_HEADERS: Names = [
    HeaderName::from_static("x-ratelimit-limit-tokens"),
    HeaderName::from_static("x-ratelimit-remaining-tokens"),
    HeaderName::from_static("x-ratelimit-reset-tokens"),
];

/// The outcome of a check: headers to send either way, and when to retry if limited.
#[derive(Debug, Default)]
pub struct Decision {
    pub limited: bool,
    pub retry_after: Duration,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// One dimension's headers: its limit, what is left of it, and when it is full again.
fn push_headers(
    d: &mut Decision,
    [limit, remaining, reset]: &Names,
    per_minute: u64,
    level: f64,
    shape: &Shape,
) {
    let full_in = Duration::from_secs_f64(((shape.capacity - level) / shape.rate()).max(0.0));
    // The reset format is ASCII digits and units, always a valid value.
    let reset_value =
        HeaderValue::try_from(fmt_duration(full_in)).unwrap_or(HeaderValue::from_static("0ms"));
    d.headers
        .push((limit.clone(), HeaderValue::from(per_minute)));
    d.headers.push((
        remaining.clone(),
        HeaderValue::from(level.max(0.0).floor() as u64),
    ));
    d.headers.push((reset.clone(), reset_value));
}

/// OpenAI's reset format: `20ms`, `1.5s`, `6m0s`.
fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = d.as_secs_f64();
        format!("{}s", (s * 1000.0).round() / 1000.0)
    } else {
        format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

pub struct RateLimiter {
    clock: Arc<dyn Clock>,
    buckets: DashMap<BucketId, Arc<Mutex<Bucket>>>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter::new(Arc::new(SystemClock::default()))
    }
}

struct Shape {
    limit: f64,
    capacity: f64,
}

impl Shape {
    fn of(per_minute: u64, burst: Option<u64>) -> Shape {
        Shape {
            limit: per_minute as f64,
            capacity: burst.unwrap_or(per_minute) as f64,
        }
    }
    fn rate(&self) -> f64 {
        self.limit / 60.0
    }
}

impl RateLimiter {
    pub fn new(clock: Arc<dyn Clock>) -> RateLimiter {
        RateLimiter {
            clock,
            buckets: DashMap::default(),
        }
    }

    fn with_bucket<R>(
        &self,
        policy: &str,
        key: &str,
        dim: Dim,
        shape: &Shape,
        f: impl FnOnce(&mut Bucket) -> R,
    ) -> R {
        let now = self.clock.now();
        let found = self
            .buckets
            .get(&(policy, key, dim) as &dyn BucketRef)
            .map(|b| b.clone());
        let cell = match found {
            Some(b) => b,
            None => self
                .buckets
                .entry((policy.to_string(), key.to_string(), dim))
                .or_insert_with(|| {
                    Arc::new(Mutex::new(Bucket {
                        level: shape.capacity,
                        at: now,
                    }))
                })
                .clone(),
        };
        let mut b = cell.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_sub(b.at).as_secs_f64();
        b.level = (b.level + elapsed * shape.rate()).min(shape.capacity);
        b.at = now;
        f(&mut b)
    }

    /// Checks (and for requests, takes from) the buckets of one policy for one key.
    pub fn check(&self, policy: &str, cfg: &RateLimitConfig, key: &str) -> Decision {
        let mut d = Decision::default();
        if let Some(rpm) = cfg.requests_per_minute {
            let shape = Shape::of(rpm, cfg.burst);
            let (ok, level) = self.with_bucket(policy, key, Dim::Requests, &shape, |b| {
                let ok = b.level >= 1.0;
                if ok {
                    b.level -= 1.0;
                }
                (ok, b.level)
            });
            push_headers(&mut d, &REQUEST_HEADERS, rpm, level, &shape);
            if !ok {
                d.limited = true;
                d.retry_after = d
                    .retry_after
                    .max(Duration::from_secs_f64((1.0 - level) / shape.rate()));
            }
        }
        if let Some(tpm) = cfg.tokens_per_minute {
            let shape = Shape::of(tpm, cfg.burst);
            let level = self.with_bucket(policy, key, Dim::Tokens, &shape, |b| b.level);
            push_headers(&mut d, &TOKEN_HEADERS, tpm, level, &shape);
            if level <= 0.0 {
                d.limited = true;
                // Until the bucket holds at least one token again.
                let wait = Duration::from_secs_f64((1.0 - level) / shape.rate());
                d.retry_after = d.retry_after.max(wait);
            }
        }
        d
    }

    /// Charges the tokens a response used.
    pub fn charge_tokens(&self, policy: &str, cfg: &RateLimitConfig, key: &str, tokens: u64) {
        if let Some(tpm) = cfg.tokens_per_minute {
            let shape = Shape::of(tpm, cfg.burst);
            self.with_bucket(policy, key, Dim::Tokens, &shape, |b| {
                b.level -= tokens as f64
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entities::policy::RateLimitKey;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[derive(Default)]
    struct FakeClock(AtomicU64);
    impl Clock for FakeClock {
        fn now(&self) -> Duration {
            Duration::from_millis(self.0.load(Ordering::SeqCst))
        }
    }
    impl FakeClock {
        fn advance(&self, ms: u64) {
            self.0.fetch_add(ms, Ordering::SeqCst);
        }
    }

    fn cfg(rpm: Option<u64>, tpm: Option<u64>, burst: Option<u64>) -> RateLimitConfig {
        RateLimitConfig {
            requests_per_minute: rpm,
            tokens_per_minute: tpm,
            burst,
            key: RateLimitKey::Consumer,
        }
    }

    #[test]
    fn requests_per_minute_with_burst_and_refill() {
        let clock = Arc::new(FakeClock::default());
        let rl = RateLimiter::new(clock.clone());
        let c = cfg(Some(60), None, Some(3));
        for i in 0..3 {
            let d = rl.check("p", &c, "k");
            assert!(!d.limited, "request {i}");
        }
        let d = rl.check("p", &c, "k");
        assert!(d.limited);
        assert_eq!(d.retry_after, Duration::from_secs(1));
        assert!(d.headers.contains(&(REQUEST_HEADERS[1].clone(), 0.into())));
        // Another key has its own bucket.
        assert!(!rl.check("p", &c, "other").limited);
        // One second refills one request (60 per minute).
        clock.advance(999);
        assert!(rl.check("p", &c, "k").limited);
        clock.advance(1);
        assert!(!rl.check("p", &c, "k").limited);
        assert!(rl.check("p", &c, "k").limited);
        clock.advance(60_000);
        let d = rl.check("p", &c, "k");
        assert!(!d.limited);
        assert!(
            d.headers.contains(&(REQUEST_HEADERS[1].clone(), 2.into())),
            "refill stops at burst: {:?}",
            d.headers
        );
    }

    #[test]
    fn tokens_are_charged_after_the_fact_and_admit_while_not_empty() {
        let clock = Arc::new(FakeClock::default());
        let rl = RateLimiter::new(clock.clone());
        let c = cfg(None, Some(600), None);
        assert!(!rl.check("p", &c, "k").limited);
        rl.charge_tokens("p", &c, "k", 599);
        assert!(!rl.check("p", &c, "k").limited, "one token left");
        rl.charge_tokens("p", &c, "k", 101); // now 100 in debt
        let d = rl.check("p", &c, "k");
        assert!(d.limited);
        assert_eq!(
            d.retry_after,
            Duration::from_millis(10_100),
            "101 tokens at 10/s"
        );
        clock.advance(10_100);
        assert!(!rl.check("p", &c, "k").limited);
    }

    #[test]
    fn reset_durations_read_like_openai() {
        assert_eq!(fmt_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(fmt_duration(Duration::from_secs(360)), "6m0s");
    }
}
