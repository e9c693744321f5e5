//! A TCP proxy a test can cut and restore, to take the store away from a node: the harness's
//! one proxy (`shoal_testkit::procs::Proxy`), with its port as a field.

pub struct Proxy {
    pub port: u16,
    inner: shoal_testkit::procs::Proxy,
}

impl Proxy {
    pub async fn start(target: std::net::SocketAddr) -> Proxy {
        let inner = shoal_testkit::procs::Proxy::start(target).await.unwrap_or_else(|e| panic!("{e}"));
        Proxy { port: inner.port(), inner }
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.inner.cut();
    }

    pub fn restore(&self) {
        self.inner.restore();
    }
}
