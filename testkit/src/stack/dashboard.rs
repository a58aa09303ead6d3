//! The dashboard's live feed as a browser reads it: server-sent events from
//! `/dashboard/api/stream`.

use super::Stack;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Reads SSE frames (event name, data) from a streaming response until `want` says stop (true)
/// or `limit` passes, or the stream ends (false).
pub async fn read_frames(
    response: &mut reqwest::Response,
    limit: Duration,
    mut want: impl FnMut(&str, &Value) -> bool,
) -> bool {
    let until = Instant::now() + limit;
    let mut buffer = String::new();
    while Instant::now() < until {
        let chunk = match tokio::time::timeout(until - Instant::now(), response.chunk()).await {
            Ok(Ok(Some(chunk))) => chunk,
            _ => return false,
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let mut event = "message";
            let mut data = String::new();
            for line in frame.lines() {
                if let Some(name) = line.strip_prefix("event:") {
                    event = name.trim();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim());
                }
            }
            if let Ok(value) = serde_json::from_str::<Value>(&data)
                && want(event, &value)
            {
                return true;
            }
        }
    }
    false
}

impl Stack {
    /// The live feed of an admin `key`, open and streaming (a statistics frame came within
    /// 10 s).
    pub async fn open_feed(&self, key: &str) -> reqwest::Response {
        let mut feed = self
            .http
            .get(self.url("/dashboard/api/stream"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        assert_eq!(feed.status(), reqwest::StatusCode::OK);
        assert!(
            read_frames(&mut feed, Duration::from_secs(10), |event, _| event
                == "stats")
            .await,
            "the feed streams"
        );
        feed
    }
}
