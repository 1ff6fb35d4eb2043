//! What the proxy's tests and the end-to-end tests share: a bounded wait on a condition and
//! one plain HTTP/1.1 client for loopback (a request written as given, the answer read to
//! the end of the connection), so every test speaks to servers the same way.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Polls `probe` every 50 ms until it returns Some, or gives up after `timeout` saying what
/// it waited for.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One HTTP/1.1 answer as it came.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    /// The status code (0 when there was no status line).
    pub status: u16,
    /// The status line and headers, without the blank line.
    pub head: String,
    /// The body as sent (still chunked if it was).
    pub body: Vec<u8>,
}

impl Answer {
    /// The value of header `name` (any case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then_some(value.trim())
        })
    }

    /// The headers, names in lower case.
    pub fn headers(&self) -> Vec<(String, String)> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect()
    }

    /// The body with any chunked transfer coding removed.
    pub fn content(&self) -> Vec<u8> {
        match self.header("transfer-encoding") {
            Some(coding) if coding.contains("chunked") => dechunk(&self.body),
            _ => self.body.clone(),
        }
    }
}

/// Sends `method path` to `host` (`127.0.0.1:port`) with `headers` (a `Host` header of
/// `host` unless given, and `Content-Length` for the body), `Connection: close`, and reads
/// the answer until the server closes, waiting at most `timeout` for each read.
pub fn exchange(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<Answer> {
    let mut stream = TcpStream::connect(host)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {host}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("Connection: close\r\n\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes)?;
    let mut response = Vec::new();
    // A read that times out or is reset ends the answer with what arrived.
    let _ = stream.read_to_end(&mut response);
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(response.len());
    let head = String::from_utf8_lossy(&response[..end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(Answer {
        status,
        head,
        body: response.get(end + 4..).unwrap_or_default().to_vec(),
    })
}

/// A chunked body decoded (what follows a malformed chunk is dropped).
pub fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line) = body.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&body[..line])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
        let rest = &body[line + 2..];
        match size {
            Some(size) if size > 0 && rest.len() >= size => {
                out.extend_from_slice(&rest[..size]);
                body = rest[size..].strip_prefix(b"\r\n").unwrap_or(&rest[size..]);
            }
            _ => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn chunked_bodies_are_decoded() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), b"abcde");
        assert_eq!(dechunk(b"zz\r\nabc"), b"");
    }

    #[test]
    fn an_exchange_sends_what_it_is_given_and_reads_the_answer() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut seen = vec![0u8; 4096];
            let n = stream.read(&mut seen).unwrap();
            stream
                .write_all(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n2\r\nok\r\n0\r\n\r\n")
                .unwrap();
            String::from_utf8_lossy(&seen[..n]).into_owned()
        });
        let answer = exchange(
            &host,
            "POST",
            "/p",
            &[("X-Q", "1")],
            b"{}",
            Duration::from_secs(5),
        )
        .unwrap();
        let request = server.join().unwrap();
        assert!(
            request.starts_with("POST /p HTTP/1.1\r\nHost: 127.0.0.1:"),
            "{request}"
        );
        assert!(
            request.contains("X-Q: 1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"),
            "{request}"
        );
        assert_eq!(answer.status, 201);
        assert_eq!(answer.header("x-a"), Some("b"));
        assert_eq!(answer.content(), b"ok");
        let waited = wait_for("never", Duration::from_millis(120), || None::<()>);
        assert_eq!(
            waited.unwrap_err(),
            "timed out after 120ms waiting for never"
        );
    }
}
