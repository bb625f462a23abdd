//! One HTTP/1.1 GET, for tests that read `/metrics`, `/readyz` or a
//! Prometheus server's query API (hyper's client connection, the hyper
//! the build already has).

use anyhow::Context;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;

/// GETs `path` (with its query) from `addr` (`host:port`): the status
/// code and the body as text.
pub async fn get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let stream = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connect to {addr}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.context("handshake")?;
    let driver = tokio::spawn(connection);
    let request =
        hyper::Request::get(path).header(hyper::header::HOST, addr).body(Empty::<Bytes>::new()).context("request")?;
    let outcome = async {
        let response = sender.send_request(request).await.with_context(|| format!("GET http://{addr}{path}"))?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.context("body")?.to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
    .await;
    drop(sender);
    driver.abort();
    outcome
}

/// Percent-encodes a query parameter value.
pub fn encode_query(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of the sample `name{labels}` in a Prometheus text exposition
/// (labels as written, e.g. `namespace="a/b",rpc="GetItems"` must all be
/// present; order does not matter). `None` when absent.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').map_or((series, ""), |(m, r)| (m, r));
        if metric != name {
            return None;
        }
        let all = labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        all.then(|| value.parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_samples_by_labels() {
        let text = "# TYPE x counter\nx_total{a=\"1\",b=\"2\"} 5\nx_total{a=\"3\"} 7\ny 1.5\n";
        assert_eq!(super::sample(text, "x_total", &[("b", "2")]), Some(5.0));
        assert_eq!(super::sample(text, "x_total", &[("a", "3")]), Some(7.0));
        assert_eq!(super::sample(text, "y", &[]), Some(1.5));
        assert_eq!(super::sample(text, "x_total", &[("a", "9")]), None);
        assert_eq!(super::encode_query("a{b=\"c\"}"), "a%7Bb%3D%22c%22%7D");
    }
}
