//! [`CanaryRouter`]: the tower service that splits traffic between stable
//! and canary, and records each request's outcome in the [`Rollout`].

use std::task::{Context, Poll, ready};

use futures_util::future::BoxFuture;
use http::{Request, Response};
use tokio::time::Instant;
use tower::Service;

use super::metrics::{Outcome, Rollout, Version};
use super::{COOKIE, PIN_HEADER};

/// An explicit routing key a layer in front of the router may insert into
/// the request's extensions; it wins over the subject, cookie and client
/// hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingKey(pub String);

/// The bucket (0–99) of a routing key: FNV-1a, 64 bit, modulo 100. Stable
/// across processes, builds and replicas (unlike `std`'s `RandomState`), so
/// every gateway replica routes a user the same way.
#[must_use]
pub fn bucket_of(key: &str) -> u8 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // < 100, so it fits.
    #[allow(clippy::cast_possible_truncation)]
    let bucket = (hash % 100) as u8;
    bucket
}

/// Routes each request to `stable` or `canary` by the [`Rollout`]'s weight.
///
/// In order: the [`PIN_HEADER`] header (`always` → canary, `never` →
/// stable); else the request's bucket — from a [`RoutingKey`] extension,
/// the authenticated subject (`trellis_auth::Claims`), the [`COOKIE`]
/// cookie, or a hash of `x-forwarded-for` and `user-agent`, in that order —
/// goes to the canary when below the weight. A request with none of them
/// gets a random bucket. Since the bucket of a key never changes, a user
/// sent to the canary at weight `w` stays on it at every weight ≥ `w`.
///
/// Every request is recorded: version, outcome (a 5xx, an inner error or
/// an answer marked `x-rollout-outcome: error` — a service's failure that
/// is not a 5xx, see [`OUTCOME_HEADER`](crate::platform::delivery::OUTCOME_HEADER) —
/// is an error) and latency.
///
/// `poll_ready` waits for both inner services, as tower's `Steer` does: the
/// version is only known once the request is seen.
#[derive(Debug, Clone)]
pub struct CanaryRouter<S, C> {
    stable: S,
    canary: C,
    rollout: Rollout,
}

impl<S, C> CanaryRouter<S, C> {
    /// A router over the two versions, sharing `rollout` with its analysis.
    pub const fn new(stable: S, canary: C, rollout: Rollout) -> Self {
        Self {
            stable,
            canary,
            rollout,
        }
    }

    /// The shared rollout state.
    pub const fn rollout(&self) -> &Rollout {
        &self.rollout
    }

    /// The stable service.
    pub const fn stable(&self) -> &S {
        &self.stable
    }

    /// The canary service.
    pub const fn canary(&self) -> &C {
        &self.canary
    }

    /// The two inner services.
    pub fn into_inner(self) -> (S, C) {
        (self.stable, self.canary)
    }

    /// Which version `req` goes to at the current weight.
    pub fn route<B>(&self, req: &Request<B>) -> Version {
        route(req, self.rollout.weight())
    }
}

fn header<'a, B>(req: &'a Request<B>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn routing_key<B>(req: &Request<B>) -> Option<String> {
    if let Some(RoutingKey(key)) = req.extensions().get::<RoutingKey>() {
        return Some(format!("key:{key}"));
    }
    if let Some(sub) = req
        .extensions()
        .get::<trellis_auth::Claims>()
        .and_then(|c| c.sub.as_deref())
    {
        return Some(format!("sub:{sub}"));
    }
    let cookie = req
        .headers()
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE && !value.is_empty()).then(|| value.to_owned())
        });
    if let Some(value) = cookie {
        return Some(format!("cookie:{value}"));
    }
    let client = header(req, "x-forwarded-for");
    let agent = header(req, "user-agent");
    (client.is_some() || agent.is_some()).then(|| {
        format!(
            "client:{}|{}",
            client.unwrap_or_default(),
            agent.unwrap_or_default()
        )
    })
}

fn route<B>(req: &Request<B>, weight: u8) -> Version {
    match header(req, PIN_HEADER) {
        Some(v) if v.eq_ignore_ascii_case("always") => return Version::Canary,
        Some(v) if v.eq_ignore_ascii_case("never") => return Version::Stable,
        _ => {}
    }
    let bucket = routing_key(req).map_or_else(|| rand::random_range(0..100), |k| bucket_of(&k));
    if bucket < weight {
        Version::Canary
    } else {
        Version::Stable
    }
}

impl<S, C, B, RB> Service<Request<B>> for CanaryRouter<S, C>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    C: Service<Request<B>, Response = Response<RB>, Error = S::Error>,
    C::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<RB>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        ready!(self.stable.poll_ready(cx))?;
        ready!(self.canary.poll_ready(cx))?;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let version = self.route(&req);
        let rollout = self.rollout.clone();
        let start = Instant::now();
        match version {
            Version::Stable => {
                let fut = self.stable.call(req);
                Box::pin(async move { observe(fut.await, &rollout, version, start) })
            }
            Version::Canary => {
                let fut = self.canary.call(req);
                Box::pin(async move { observe(fut.await, &rollout, version, start) })
            }
        }
    }
}

fn observe<RB, E>(
    result: Result<Response<RB>, E>,
    rollout: &Rollout,
    version: Version,
    start: Instant,
) -> Result<Response<RB>, E> {
    let outcome = match &result {
        Ok(response)
            if !response.status().is_server_error()
                && response
                    .headers()
                    .get(crate::platform::delivery::OUTCOME_HEADER)
                    .is_none_or(|v| v != "error") =>
        {
            Outcome::Success
        }
        _ => Outcome::Error,
    };
    rollout.record(version, outcome, start.elapsed());
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn the_registry_writes_the_documented_metric_names() {
        let rollout = Rollout::new();
        rollout.set_weight(20);
        rollout.record(
            Version::Canary,
            Outcome::Error,
            std::time::Duration::from_millis(3),
        );
        let mut registry = Registry::default();
        rollout.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let names: std::collections::BTreeSet<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.split(['{', ' ']).next().unwrap())
            .collect();
        for name in [
            super::super::REQUESTS_METRIC,
            super::super::WEIGHT_METRIC,
            &format!("{}_bucket", super::super::DURATION_METRIC),
            &format!("{}_count", super::super::DURATION_METRIC),
        ] {
            assert!(names.contains(name), "{name} not in {names:?}");
        }
        assert!(
            text.contains(r#"gateway_rollout_requests_total{version="canary",outcome="error"} 1"#),
            "{text}"
        );
        assert!(text.contains("gateway_rollout_canary_weight 20"), "{text}");
    }

    #[tokio::test]
    async fn an_answer_marked_as_a_failure_counts_as_an_error() {
        use tower::ServiceExt;
        let answer = |marked: bool| {
            tower::service_fn(move |_req: Request<()>| async move {
                let mut response = Response::new(());
                if marked {
                    response.headers_mut().insert(
                        crate::platform::delivery::OUTCOME_HEADER,
                        http::HeaderValue::from_static("error"),
                    );
                }
                Ok::<_, std::convert::Infallible>(response)
            })
        };
        let rollout = Rollout::new();
        let router = CanaryRouter::new(answer(false), answer(true), rollout.clone());
        for pin in ["never", "always"] {
            let req = Request::builder().header(PIN_HEADER, pin).body(()).unwrap();
            router.clone().oneshot(req).await.unwrap();
        }
        let over = std::time::Duration::from_secs(60);
        assert_eq!(rollout.stats(Version::Stable, over).errors, 0);
        assert_eq!(rollout.stats(Version::Canary, over).errors, 1);
        assert_eq!(rollout.stats(Version::Canary, over).requests, 1);
    }

    #[test]
    fn weight_zero_and_hundred_are_absolute_unless_pinned() {
        let req = |pin: Option<&str>| {
            let mut b = Request::builder().header("user-agent", "x");
            if let Some(p) = pin {
                b = b.header(PIN_HEADER, p);
            }
            b.body(()).unwrap()
        };
        assert_eq!(route(&req(None), 0), Version::Stable);
        assert_eq!(route(&req(None), 100), Version::Canary);
        assert_eq!(route(&req(Some("always")), 0), Version::Canary);
        assert_eq!(route(&req(Some("never")), 100), Version::Stable);
    }
}
