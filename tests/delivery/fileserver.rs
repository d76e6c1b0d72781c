//! A local HTTP file server for deploy downloads (std sockets, one thread per connection),
//! with `Range: bytes=<n>-` support and misbehaviours on demand: drop the connection after
//! n bytes (once), or stall there until told otherwise. It records every request's path and
//! `Range` header.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the next responses behave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Send everything asked for.
    Full,
    /// Send up to this absolute offset, then close the connection (once; then `Full`).
    DropAfter(usize),
    /// Send up to this absolute offset, then hold the connection until the behaviour changes.
    StallAfter(usize),
}

/// A request the server saw.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Request path.
    pub path: String,
    /// Its `Range` header.
    pub range: Option<String>,
}

struct Shared {
    files: Vec<(String, Vec<u8>)>,
    behaviour: Mutex<Behaviour>,
    seen: Mutex<Vec<Seen>>,
    /// Bytes of file content sent in all.
    sent: Mutex<usize>,
}

/// The running server.
pub struct FileServer {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    shared: Arc<Shared>,
}

impl FileServer {
    /// Serves `files` (path, bytes) on a free port.
    pub fn start(files: Vec<(&str, Vec<u8>)>) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Shared {
            files: files.into_iter().map(|(p, b)| (p.to_string(), b)).collect(),
            behaviour: Mutex::new(Behaviour::Full),
            seen: Mutex::default(),
            sent: Mutex::default(),
        });
        let serving = shared.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let shared = serving.clone();
                std::thread::spawn(move || serve(&shared, stream));
            }
        });
        FileServer { base, shared }
    }

    /// The URL of a served path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Changes how the next (and stalled) responses behave.
    pub fn set(&self, behaviour: Behaviour) {
        *self.shared.behaviour.lock().unwrap() = behaviour;
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// File bytes sent so far.
    pub fn sent(&self) -> usize {
        *self.shared.sent.lock().unwrap()
    }
}

fn serve(shared: &Shared, mut stream: TcpStream) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut first = String::new();
    if reader.read_line(&mut first).is_err() {
        return;
    }
    let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_string());
            }
        }
    }
    shared.seen.lock().unwrap().push(Seen {
        path: path.clone(),
        range: range.clone(),
    });
    let Some((_, body)) = shared.files.iter().find(|(p, _)| *p == path) else {
        let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok())
        .unwrap_or(0)
        .min(body.len());
    let head = match range {
        Some(_) => format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nConnection: close\r\n\r\n",
            body.len() - start,
            body.len().saturating_sub(1),
            body.len()
        ),
        None => format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        ),
    };
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    send(shared, &mut stream, body, start);
}

fn send(shared: &Shared, stream: &mut TcpStream, body: &[u8], start: usize) {
    let behaviour = *shared.behaviour.lock().unwrap();
    let stop = match behaviour {
        Behaviour::Full => body.len(),
        Behaviour::DropAfter(n) | Behaviour::StallAfter(n) => n.clamp(start, body.len()),
    };
    if stream.write_all(&body[start..stop]).is_err() {
        return;
    }
    *shared.sent.lock().unwrap() += stop - start;
    match behaviour {
        Behaviour::Full => {}
        Behaviour::DropAfter(_) => {
            *shared.behaviour.lock().unwrap() = Behaviour::Full;
            let _ = stream.shutdown(Shutdown::Both);
        }
        Behaviour::StallAfter(_) => {
            while *shared.behaviour.lock().unwrap() == behaviour {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}
