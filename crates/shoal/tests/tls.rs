//! TLS (issue 11, item 10): a node with `http.tls` serves only HTTPS with its certificate;
//! nodes forward to each other over https and verify the peer against `cluster.tls_ca`; a
//! certificate whose files change is used by new connections without a restart; a client that
//! never finishes its handshake is closed under `http.header_read_timeout`; and the PostgreSQL
//! store honours `sslmode` up to `verify-full`. Every certificate is made here, by a test CA.

mod common;

use common::TestNode;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SerialNumber};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(20);

/// A certificate authority of the test's own.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its key, PEM.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for `names` (host names or IP addresses) with serial `serial`.
    fn issue(&self, names: &[&str], serial: u64) -> Leaf {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.serial_number = Some(SerialNumber::from(serial));
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec() }
    }
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_owned()
}

/// A client that trusts only `ca` (and opens a new connection, with a full handshake, for every
/// request: no pool, no session resumption across clients).
fn client_trusting(ca: &Ca) -> reqwest::Client {
    common::authorized(reqwest::Client::builder())
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .tls_info(true)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// An error with all its causes, as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The DER of the certificate a new connection to `url` is shown.
async fn served_certificate(ca: &Ca, url: &str) -> Vec<u8> {
    let resp = client_trusting(ca).get(format!("{url}/health/live")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let info = resp.extensions().get::<reqwest::tls::TlsInfo>().expect("TLS info").clone();
    info.peer_certificate().expect("a peer certificate").to_vec()
}

/// Config lines that give a node `leaf` as its certificate, the files in `dir`.
fn tls_lines(dir: &Path, leaf: &Leaf) -> String {
    let cert = write(&dir.join("node.crt"), &leaf.cert_pem);
    let key = write(&dir.join("node.key"), &leaf.key_pem);
    format!("tls = {{ cert = \"{}\", key = \"{}\" }}", cert.display(), key.display())
}

/// A node whose `[http]` and `[cluster]` sections get these extra lines, on `store_url`.
async fn node(id: &str, store_url: &str, http: &str, cluster: &str, client: reqwest::Client) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let mut n = TestNode::start_edited(dir, store_url.to_owned(), |t| {
        t.replace("node_id = \"n1\"", &format!("node_id = \"{id}\""))
            .replace("[http]\n", &format!("[http]\n{http}\n"))
            .replace("[cluster]\n", &format!("[cluster]\n{cluster}\n"))
    })
    .await;
    n.http = client;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_tls_serves_only_https_with_its_certificate() {
    let ca = Ca::new("shoal test CA");
    let leaf = ca.issue(&["localhost", "127.0.0.1"], 1);
    let files = tempfile::tempdir().unwrap();
    let db = tempfile::tempdir().unwrap();
    let store = common::store_url(common::Backend::Sqlite, db.path());
    let mut n = node("n1", &store, &tls_lines(files.path(), &leaf), "", client_trusting(&ca)).await;

    // The default advertised URL follows: https, the address bound.
    assert!(n.url.starts_with("https://127.0.0.1:"), "{}", n.url);
    let (status, body) = n.get("/api/v1/nodes/n1").await;
    assert_eq!((status, body["url"].as_str()), (200, Some(n.url.as_str())), "{body}");
    assert_eq!(served_certificate(&ca, &n.url).await, leaf.der);
    // Through `localhost` too: the certificate names it.
    let port = n.url.rsplit(':').next().unwrap();
    let r = n.http.get(format!("https://localhost:{port}/health/live")).send().await;
    assert_eq!(r.map(|r| r.status().as_u16()).map_err(|e| chain(&e)), Ok(200));

    // A client that does not trust the test CA refuses the node's certificate.
    let e = reqwest::Client::new().get(format!("{}/health/live", n.url)).send().await.unwrap_err();
    assert!(chain(&e).contains("certificate"), "{}", chain(&e));
    // Plain HTTP to the TLS port gets no answer.
    let plain = n.url.replacen("https://", "http://", 1);
    let e = reqwest::Client::new().get(format!("{plain}/health/live")).send().await.unwrap_err();
    assert!(e.is_request() || e.is_connect(), "{}", chain(&e));
    // The node still serves after those.
    assert_eq!(n.get("/health/live").await.0, 200);
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_files_that_are_missing_unreadable_not_pem_or_mismatched_stop_the_start() {
    let ca = Ca::new("shoal test CA");
    let (a, b) = (ca.issue(&["127.0.0.1"], 1), ca.issue(&["127.0.0.1"], 2));
    let files = tempfile::tempdir().unwrap();
    let f = files.path();
    let (cert, key) = (write(&f.join("a.crt"), &a.cert_pem), write(&f.join("a.key"), &a.key_pem));
    let other_key = write(&f.join("b.key"), &b.key_pem);
    let junk = write(&f.join("junk.pem"), "hello\n");
    let missing = f.join("missing.pem");
    let start = |http: String, cluster: String| async move {
        let dir = tempfile::tempdir().unwrap();
        let store = format!("sqlite://{}/shoal.db", dir.path().display());
        let text = common::config_text(dir.path(), &store, "")
            .replace("[http]\n", &format!("[http]\n{http}\n"))
            .replace("[cluster]\n", &format!("[cluster]\n{cluster}\n"));
        match shoal_server::Config::parse(&text, "test", Vec::<(String, String)>::new()) {
            Ok(config) => match shoal_server::start(config).await {
                Ok(node) => {
                    node.shutdown().await;
                    "started".to_owned()
                }
                Err(e) => format!("{e:#}"),
            },
            Err(e) => e.to_string(),
        }
    };
    let tls = |c: &Path, k: &Path| format!("tls = {{ cert = \"{}\", key = \"{}\" }}", c.display(), k.display());
    for (http, cluster, want) in [
        (tls(&missing, &key), String::new(), format!("http.tls.cert {}: no such file", missing.display())),
        (tls(&cert, &missing), String::new(), format!("http.tls.key {}: no such file", missing.display())),
        (tls(&junk, &key), String::new(), format!("http.tls.cert {}: holds no PEM certificate", junk.display())),
        (tls(&cert, &junk), String::new(), format!("http.tls.key {}: holds no PEM private key", junk.display())),
        (tls(&cert, &cert), String::new(), "holds no PEM private key".to_owned()),
        (tls(f, &key), String::new(), format!("http.tls.cert {}: cannot read it", f.display())),
        (
            tls(&cert, &other_key),
            String::new(),
            format!(
                "http.tls.key {} does not match the certificate in http.tls.cert {}",
                other_key.display(),
                cert.display()
            ),
        ),
        (
            tls(&cert, &key),
            format!("tls_ca = \"{}\"", junk.display()),
            format!("cluster.tls_ca {}: holds no PEM certificate", junk.display()),
        ),
        (
            format!("{}\nadvertise = \"http://127.0.0.1:7700\"", tls(&cert, &key)),
            String::new(),
            "advertise https://127.0.0.1:7700".to_owned(),
        ),
        ("advertise = \"https://127.0.0.1:7700\"".to_owned(), String::new(), "http.tls is not set".to_owned()),
    ] {
        let got = start(http.clone(), cluster.clone()).await;
        assert!(got.contains("invalid configuration") && got.contains(&want), "{http} {cluster}:\n{got}\nwant {want}");
    }
    // The same files, right, start a node.
    assert_eq!(
        start(tls(&cert, &key), format!("tls_ca = \"{}\"", write(&f.join("ca.pem"), &ca.pem()).display())).await,
        "started"
    );
}

/// Registers, through `via`, sandbox `name` local to `holder_id`, rooted in `holder`'s folder.
async fn local_sandbox(via: &TestNode, holder: &TestNode, holder_id: &str, name: &str) -> reqwest::Response {
    let root = holder.dir.path().join("sandboxes").join(name);
    let body = json!({"name": name, "kind": "local", "root": root.display().to_string(), "node": holder_id});
    via.http.post(format!("{}/api/v1/sandboxes", via.url)).json(&body).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_forward_over_https_and_refuse_a_peer_their_ca_did_not_sign() {
    let (ca, other_ca) = (Ca::new("shoal test CA"), Ca::new("another CA"));
    let files = tempfile::tempdir().unwrap();
    let f = files.path();
    let ca_file = write(&f.join("ca.pem"), &ca.pem());
    let other_ca_file = write(&f.join("other-ca.pem"), &other_ca.pem());
    let db = tempfile::tempdir().unwrap();
    let store = common::store_url(common::Backend::Sqlite, db.path());
    let tls_of = |id: &str, serial: u64| {
        let dir = f.join(id);
        std::fs::create_dir_all(&dir).unwrap();
        tls_lines(&dir, &ca.issue(&["127.0.0.1"], serial))
    };
    let trust = format!("tls_ca = \"{}\"", ca_file.display());
    let mut n1 = node("n1", &store, &tls_of("n1", 1), &trust, client_trusting(&ca)).await;
    let mut n2 = node("n2", &store, &tls_of("n2", 2), &trust, client_trusting(&ca)).await;
    // n3's certificate is from the cluster's CA, but it trusts only another one.
    let wrong_trust = format!("tls_ca = \"{}\"", other_ca_file.display());
    let mut n3 = node("n3", &store, &tls_of("n3", 3), &wrong_trust, client_trusting(&ca)).await;

    // Registered through n1, the local sandbox is created by its holder n2: forwarded.
    let r = local_sandbox(&n1, &n2, "n2", "loc").await;
    let served_by = r.headers().get("x-shoal-served-by").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!((r.status().as_u16(), served_by.as_deref()), (201, Some("n2")), "{}", r.text().await.unwrap());
    // A file written and read back through n1 lives on n2.
    let url = |n: &TestNode, path: &str| format!("{}/api/v1/sandboxes/loc/files/{path}", n.url);
    let put = n1.http.put(url(&n1, "a.txt")).body("over https\n").send().await.unwrap();
    assert_eq!(put.status(), 201, "{}", put.text().await.unwrap());
    let get = n1.http.get(url(&n1, "a.txt")).send().await.unwrap();
    let served_by = get.headers().get("x-shoal-served-by").unwrap().to_str().unwrap().to_owned();
    assert_eq!((get.status().as_u16(), served_by.as_str()), (200, "n2"));
    assert_eq!(get.text().await.unwrap(), "over https\n");

    // n3 cannot verify n2's certificate, so it does not forward: 503 naming the certificate.
    let r = n3.http.get(url(&n3, "a.txt")).send().await.unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("node_unavailable")), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    eprintln!("forwarding to a peer not signed by the CA: {message}");
    assert!(message.contains("node n2") && message.contains("certificate"), "{message}");

    n3.stop().await;
    n2.stop().await;
    n1.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_whose_files_change_is_used_by_new_connections_without_a_restart() {
    let ca = Ca::new("shoal test CA");
    let (first, second, third) =
        (ca.issue(&["127.0.0.1"], 1), ca.issue(&["127.0.0.1"], 2), ca.issue(&["127.0.0.1"], 3));
    let files = tempfile::tempdir().unwrap();
    let db = tempfile::tempdir().unwrap();
    let store = common::store_url(common::Backend::Sqlite, db.path());
    let mut n = node("n1", &store, &tls_lines(files.path(), &first), "", client_trusting(&ca)).await;
    let (cert, key) = (files.path().join("node.crt"), files.path().join("node.key"));
    assert_eq!(served_certificate(&ca, &n.url).await, first.der);

    // Replaced in place, certificate then key: the next connections get the new one.
    std::fs::write(&cert, &second.cert_pem).unwrap();
    std::fs::write(&key, &second.key_pem).unwrap();
    let wait_for = |want: Vec<u8>, what: &'static str| {
        let (ca, url) = (&ca, n.url.clone());
        async move {
            let deadline = Instant::now() + T;
            while served_certificate(ca, &url).await != want {
                assert!(Instant::now() < deadline, "{what} not served within {T:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait_for(second.der.clone(), "the second certificate").await;

    // A certificate without its key (the key file not written yet) is refused: the second
    // pair stays in use, and the reload worker says why.
    std::fs::write(&cert, &third.cert_pem).unwrap();
    let deadline = Instant::now() + T;
    let error = loop {
        let (_, me) = n.get("/api/v1/nodes/n1").await;
        let worker = me["workers"].as_array().unwrap().iter().find(|w| w["name"] == "tls-reload").unwrap().clone();
        if let Some(e) = worker["last_error"].as_str() {
            break e.to_owned();
        }
        assert!(Instant::now() < deadline, "no reload error within {T:?}: {worker}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(error.contains("still serving the previous one") && error.contains("does not match"), "{error}");
    assert_eq!(served_certificate(&ca, &n.url).await, second.der);
    // Its key arrives: the third pair is used.
    std::fs::write(&key, &third.key_pem).unwrap();
    wait_for(third.der.clone(), "the third certificate").await;
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_that_never_comes_is_closed_in_time_and_holds_nobody_up() {
    let ca = Ca::new("shoal test CA");
    let leaf = ca.issue(&["127.0.0.1"], 1);
    let files = tempfile::tempdir().unwrap();
    let db = tempfile::tempdir().unwrap();
    let store = common::store_url(common::Backend::Sqlite, db.path());
    let http = format!("{}\nheader_read_timeout = \"2s\"", tls_lines(files.path(), &leaf));
    let mut n = node("n1", &store, &http, "", client_trusting(&ca)).await;
    let addr = n.url.trim_start_matches("https://").to_owned();

    // One client opens a socket and sends nothing; another sends the start of a ClientHello and
    // stops. Meanwhile others are served at once: the handshake is not on the accept loop.
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut partial = tokio::net::TcpStream::connect(&addr).await.unwrap();
    partial.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.unwrap();
    let opened = Instant::now();
    assert_eq!(n.get("/health/live").await.0, 200);
    assert!(opened.elapsed() < Duration::from_millis(1500), "served only after {:?}", opened.elapsed());
    for (what, socket) in [("silent", &mut silent), ("partial", &mut partial)] {
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf)).await;
        let took = opened.elapsed();
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{what}: not closed: {closed:?}");
        assert!(took >= Duration::from_millis(1900), "{what}: closed after only {took:?}");
    }
    assert_eq!(n.get("/health/live").await.0, 200);
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_verifies_the_server_as_sslmode_says() {
    let (ca, other_ca) = (Ca::new("shoal test CA"), Ca::new("another CA"));
    let leaf = ca.issue(&["localhost", "127.0.0.1"], 7);
    let pg = shoal_testkit::PgServer::start_tls(&leaf.cert_pem, &leaf.key_pem);
    let db = pg.fresh_database();
    let files = tempfile::tempdir().unwrap();
    let ca_file = write(&files.path().join("ca.pem"), &ca.pem());
    let other_ca_file = write(&files.path().join("other-ca.pem"), &other_ca.pem());
    let open = |url: String| async move { shoal_store::Store::open(&url, 2).await.map_err(|e| e.to_string()) };
    let db_name = db.rsplit('/').next().unwrap().to_owned();
    let on_host = |host: &str, query: &str| format!("postgres://shoal@{host}:{}/{db_name}?{query}", pg.port());

    // verify-full with the right CA and the name in the certificate: the store opens, and its
    // connections are TLS (a session's too).
    let url = on_host("127.0.0.1", &format!("sslmode=verify-full&sslrootcert={}", ca_file.display()));
    let store = open(url.clone()).await.unwrap_or_else(|e| panic!("{url}: {e}"));
    let (_session, _events) = store.open_session("n1").await.unwrap();
    let count = |sql: &str| shoal_testkit::psql(&pg.admin_url(), sql).unwrap();
    let tls_shoal = "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE ssl AND application_name LIKE 'shoal%'";
    let plain_shoal = "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE NOT ssl AND application_name LIKE 'shoal%'";
    assert!(count(tls_shoal).parse::<u32>().unwrap() >= 2, "{}", count(tls_shoal));
    assert_eq!(count(plain_shoal), "0");
    drop(store);

    // The wrong CA: refused, saying why.
    let url = on_host("127.0.0.1", &format!("sslmode=verify-full&sslrootcert={}", other_ca_file.display()));
    let e = open(url.clone()).await.err().unwrap_or_else(|| panic!("{url} opened"));
    eprintln!("wrong CA: {e}");
    assert!(e.contains(&format!("not signed by a CA of sslrootcert {}", other_ca_file.display())), "{e}");
    // The right CA, the wrong name (connecting to 127.0.0.1 by hostaddr): verify-full refuses,
    // verify-ca (chain only) accepts.
    let query = |mode: &str| format!("hostaddr=127.0.0.1&sslmode={mode}&sslrootcert={}", ca_file.display());
    let e = open(on_host("db.example", &query("verify-full"))).await.err().expect("a wrong name is refused");
    eprintln!("wrong name: {e}");
    assert!(e.contains("certificate") && e.contains("db.example"), "{e}");
    open(on_host("db.example", &query("verify-ca"))).await.unwrap();
    // require: TLS without checking the certificate, as in libpq.
    open(on_host("127.0.0.1", "sslmode=require")).await.unwrap();
    // disable: plain.
    open(on_host("127.0.0.1", "sslmode=disable")).await.unwrap();
    // A verifying mode with a root file that is not there names it.
    let missing = files.path().join("missing.pem");
    let e = open(on_host("127.0.0.1", &format!("sslmode=verify-full&sslrootcert={}", missing.display())))
        .await
        .err()
        .unwrap();
    assert!(e.contains(&format!("sslrootcert {}", missing.display())), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_trusts_the_ca_of_ca_file() {
    let ca = Ca::new("shoal test CA");
    let files = tempfile::tempdir().unwrap();
    let db = tempfile::tempdir().unwrap();
    let store = common::store_url(common::Backend::Sqlite, db.path());
    let leaf = ca.issue(&["127.0.0.1"], 1);
    let mut n = node("n1", &store, &tls_lines(files.path(), &leaf), "", client_trusting(&ca)).await;
    let ca_file = write(&files.path().join("ca.pem"), &ca.pem());
    let run = |args: Vec<String>, env: Option<PathBuf>| {
        tokio::task::spawn_blocking(move || {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_shoal"));
            cmd.args(&args)
                .env_remove("SHOAL_CA_FILE")
                .env_remove("SSL_CERT_FILE")
                .env("SHOAL_TOKEN", common::test_token());
            if let Some(path) = env {
                cmd.env("SHOAL_CA_FILE", path);
            }
            let out = cmd.output().unwrap();
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            (out.status.code(), text)
        })
    };
    let server = n.url.clone();
    let with_flag = ["--server", &server, "--ca-file", &ca_file.display().to_string(), "nodes"];
    let (code, out) = run(with_flag.iter().map(|s| s.to_string()).collect(), None).await.unwrap();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("n1"), "{out}");
    let plain = ["--server".to_owned(), server.clone(), "nodes".to_owned()];
    let (code, out) = run(plain.to_vec(), Some(ca_file.clone())).await.unwrap();
    assert_eq!(code, Some(0), "SHOAL_CA_FILE: {out}");
    // Without the CA, the system's roots do not know the test CA.
    let (code, out) = run(plain.to_vec(), None).await.unwrap();
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("certificate"), "{out}");
    // A CA file that is not one says so.
    let junk = write(&files.path().join("junk.pem"), "hello\n");
    let (code, out) = run(plain.to_vec(), Some(junk)).await.unwrap();
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("holds no PEM certificate"), "{out}");
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_connection_cap_the_503_comes_through_tls() {
    let ca = Ca::new("shoal test CA");
    let leaf = ca.issue(&["127.0.0.1"], 1);
    let files = tempfile::tempdir().unwrap();
    let db = tempfile::tempdir().unwrap();
    let store = common::store_url(common::Backend::Sqlite, db.path());
    let http = format!("{}\nheader_read_timeout = \"3s\"\nmax_connections = 1", tls_lines(files.path(), &leaf));
    let mut n = node("n1", &store, &http, "", client_trusting(&ca)).await;
    let addr = n.url.trim_start_matches("https://").to_owned();

    // A silent client holds the one slot until the handshake's time is up.
    let _silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (status, body) = n.get("/health/live").await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("too_many_connections")), "{body}");
    // Then the slot is free again.
    let deadline = Instant::now() + T;
    while n.get("/health/live").await.0 != 200 {
        assert!(Instant::now() < deadline, "the slot was not freed within {T:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    n.stop().await;
}
