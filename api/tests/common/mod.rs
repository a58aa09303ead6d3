//! What the API's tests share beyond the test kit (`orderflow-testkit`, which runs the API
//! in-process, sends and waits): how a revocation is seen landing.

use orderflow_testkit::wait_for;
use reqwest::StatusCode;
use std::time::{Duration, Instant};

/// Sends `read` (a request with a key just revoked) until it answers 401, every answer before
/// that being `before`; fails after 5 s. Returns how long the revocation took to land.
pub async fn until_unauthorized<F, Fut>(before: StatusCode, read: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = reqwest::Result<reqwest::Response>>,
{
    let started = Instant::now();
    wait_for("the revoked key to be refused")
        .within(Duration::from_secs(5))
        .every(Duration::ZERO)
        .until(|| async {
            let status = read().await.unwrap().status();
            if status == StatusCode::UNAUTHORIZED {
                return true;
            }
            assert_eq!(status, before);
            false
        })
        .await;
    started.elapsed()
}
