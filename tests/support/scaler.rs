//! A reference scaler for tests: implements `lmi.agent.v1.Scaler`, records every report it receives and
//! sends the directives a test gives it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{net::SocketAddr, time::Duration};

use lmi_proto::v1::{self as pb, scaler_server};
use tokio::sync::{mpsc, Mutex};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

struct Service {
    reports: mpsc::UnboundedSender<pb::UtilizationReport>,
    directives: std::sync::Arc<Mutex<Option<mpsc::Receiver<pb::ScalerDirective>>>>,
}

#[tonic::async_trait]
impl scaler_server::Scaler for Service {
    type ReportStream = ReceiverStream<Result<pb::ScalerDirective, Status>>;

    async fn report(
        &self,
        request: Request<Streaming<pb::UtilizationReport>>,
    ) -> Result<Response<Self::ReportStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let reports = self.reports.clone();
        let ack = tx.clone();
        tokio::spawn(async move {
            while let Ok(Some(r)) = inbound.message().await {
                let sequence = r.sequence;
                let _ = reports.send(r);
                let _ = ack
                    .send(Ok(pb::ScalerDirective {
                        directive: Some(pb::scaler_directive::Directive::Acknowledge(
                            pb::Acknowledge { sequence },
                        )),
                    }))
                    .await;
            }
        });
        // Directives the test queued go out on this stream (one stream at a time takes them).
        let directives = self.directives.clone();
        tokio::spawn(async move {
            let mut guard = directives.lock().await;
            if let Some(rx) = guard.as_mut() {
                while let Some(d) = rx.recv().await {
                    if tx.send(Ok(d)).await.is_err() {
                        break;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A running reference scaler. It runs on a runtime of its own, so that dropping it ends every task and
/// closes every connection at once, as a scaler process that exits would.
pub struct RefScaler {
    pub addr: SocketAddr,
    pub reports: mpsc::UnboundedReceiver<pb::UtilizationReport>,
    pub directives: mpsc::Sender<pb::ScalerDirective>,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for RefScaler {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl RefScaler {
    /// Starts on `addr` (use port 0 for any free loopback port).
    pub async fn start(addr: SocketAddr) -> Self {
        let std_listener = std::net::TcpListener::bind(addr).unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let (rtx, rrx) = mpsc::unbounded_channel();
        let (dtx, drx) = mpsc::channel(16);
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.spawn(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                let svc = Service {
                    reports: rtx,
                    directives: std::sync::Arc::new(Mutex::new(Some(drx))),
                };
                let _ = tonic::transport::Server::builder()
                    .add_service(scaler_server::ScalerServer::new(svc))
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                    .await;
            });
            // Runs until the RefScaler is dropped; dropping the runtime then drops every task and socket.
            rt.block_on(async {
                let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
            });
        });
        Self {
            addr,
            reports: rrx,
            directives: dtx,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// The next report (bounded wait).
    pub async fn next(&mut self) -> pb::UtilizationReport {
        tokio::time::timeout(Duration::from_secs(30), self.reports.recv())
            .await
            .expect("no report from the agent within 30 s")
            .expect("report channel closed")
    }

    /// Reports until one satisfies `pred` (bounded by 30 s); returns it and every report seen before it.
    pub async fn until(
        &mut self,
        what: &str,
        pred: impl Fn(&pb::UtilizationReport) -> bool,
    ) -> (pb::UtilizationReport, Vec<pb::UtilizationReport>) {
        let mut seen = Vec::new();
        let wait = async {
            loop {
                let r = self.reports.recv().await.expect("report channel closed");
                if pred(&r) {
                    return r;
                }
                seen.push(r);
            }
        };
        match tokio::time::timeout(Duration::from_secs(30), wait).await {
            Ok(r) => (r, seen),
            Err(_) => panic!("no report with {what} within 30 s; last: {:?}", seen.last()),
        }
    }
}
