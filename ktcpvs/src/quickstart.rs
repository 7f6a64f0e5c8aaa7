//! `ktcpvs quickstart`: the embedded default. Three demo origins (hyper,
//! on a tokio thread of their own) on the three ports after the switch's,
//! and a switch in front of them, so a fresh machine shows the product
//! working with nothing else installed:
//!
//! ```text
//! $ ktcpvs quickstart &
//! $ curl -i http://127.0.0.1:8080/
//! X-Origin: origin-1 ...  hello from origin-1
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use crate::config::{Config, ConfigError};

/// The quickstart configuration: lblc would pin `/` to one origin, so the
/// demo uses round-robin to show the spreading.
pub fn config(
    listen: SocketAddr,
    workers: usize,
    origins: &[SocketAddr],
) -> Result<Config, ConfigError> {
    let mut text = format!(
        "[global]\nworkers = {workers}\n\n[[service]]\nname = \"quickstart\"\nlisten = \"{listen}\"\nscheduler = \"rr\"\n"
    );
    for o in origins {
        text.push_str(&format!("\n[[service.server]]\naddress = \"{o}\"\n"));
    }
    Config::from_toml(&text)
}

/// Starts `n` demo origins on `ip:first_port`, `ip:first_port+1`, … and
/// returns their addresses once they accept connections.
pub fn spawn_origins(
    ip: std::net::IpAddr,
    first_port: u16,
    n: usize,
) -> std::io::Result<Vec<SocketAddr>> {
    let mut listeners = Vec::new();
    for k in 0..n {
        let port = if first_port == 0 {
            0
        } else {
            first_port + k as u16
        };
        let addr = SocketAddr::new(ip, port);
        let l = std::net::TcpListener::bind(addr).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("{addr}: {e} (is another quickstart or `ktcpvs origins` running?)"),
            )
        })?;
        l.set_nonblocking(true)?;
        listeners.push(l);
    }
    let addrs = listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<Vec<_>, _>>()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("ktcpvs-origins")
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("ktcpvs-origins".into())
        .spawn(move || {
            rt.block_on(async move {
                let mut tasks = Vec::new();
                for (k, l) in listeners.into_iter().enumerate() {
                    let name = format!("origin-{}", k + 1);
                    let l = tokio::net::TcpListener::from_std(l).expect("listener into tokio");
                    tasks.push(tokio::spawn(serve_origin(l, name)));
                }
                for t in tasks {
                    let _ = t.await;
                }
            })
        })?;
    Ok(addrs)
}

async fn serve_origin(l: tokio::net::TcpListener, name: String) {
    let body = Bytes::from(format!("hello from {name}\n"));
    loop {
        let Ok((s, _)) = l.accept().await else {
            // EMFILE and the like: back off instead of spinning.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let (name, body) = (name.clone(), body.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (name, body) = (name.clone(), body.clone());
                async move {
                    // A request body is read to its end (and counted), as
                    // a real application would: answering first and
                    // closing makes clients that are still sending fail.
                    let head = req.method() == hyper::Method::HEAD;
                    let mut incoming = req.into_body();
                    let mut received = 0u64;
                    while let Some(frame) = incoming.frame().await {
                        match frame {
                            Ok(f) => received += f.data_ref().map_or(0, |d| d.len() as u64),
                            Err(_) => break,
                        }
                    }
                    let body = if head {
                        Bytes::new()
                    } else if received > 0 {
                        Bytes::from(format!(
                            "{} (received {received} bytes)\n",
                            String::from_utf8_lossy(&body).trim_end()
                        ))
                    } else {
                        body
                    };
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("X-Origin", name)
                            .header("Content-Type", "text/plain")
                            .body(Full::new(body))
                            .expect("static response"),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}
