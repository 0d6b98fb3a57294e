//! The dashboard end to end: its JSON API over real HTTP, and the page in a real headless
//! Chromium (Debian's `chromium` driven through `chromedriver`), loaded from a follower: three
//! members and the leader, the running job's graph and its checkpoints advancing, a new leader
//! shown after `kill -9` of the old one, and the coordinator serving the page going away said
//! plainly. A screenshot of each view goes to `target/tmp/dashboard-screenshots/`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use raftstream::wordcount::WordCountJob;
use serde_json::{json, Value};

use crate::common::{eventually, fast_executors, start_executors, test_settings, word_count, TestCluster};

const PATIENCE: Duration = Duration::from_secs(60);

/// A program on the PATH, if installed.
fn installed(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|directory| directory.join(program))
            .find(|candidate| candidate.is_file())
    })
}

/// chromedriver, killed when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_driver(chromedriver: &Path, log: &Path) -> anyhow::Result<Driver> {
    let port = raftstream::local_cluster::free_local_address()?
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no port"))?;
    let log = std::fs::File::create(log)?;
    let child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let driver = Driver { child, port };
    let http = reqwest::Client::new();
    eventually("chromedriver to answer", Duration::from_secs(20), || async {
        let response = http.get(format!("http://127.0.0.1:{port}/status")).send().await.ok()?;
        response.status().is_success().then_some(())
    })
    .await?;
    Ok(driver)
}

async fn open_browser(driver: &Driver, chromium: &Path, profile: &Path) -> anyhow::Result<Client> {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        json!({
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    Ok(ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await?)
}

/// Runs `script` in the page and returns what it returns.
async fn page_value(browser: &Client, script: &str) -> Option<Value> {
    browser.execute(script, Vec::new()).await.ok()
}

async fn screenshot(browser: &Client, name: &str) -> anyhow::Result<PathBuf> {
    let directory = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    std::fs::create_dir_all(&directory)?;
    let path = directory.join(format!("{name}.png"));
    std::fs::write(&path, browser.screenshot().await?)?;
    tracing::info!(path = %path.display(), "screenshot");
    Ok(path)
}

/// Waits until `script` returns something `accept` takes.
async fn page_until<T>(
    browser: &Client,
    what: &str,
    patience: Duration,
    script: &str,
    accept: impl Fn(&Value) -> Option<T>,
) -> anyhow::Result<T> {
    eventually(what, patience, || async {
        page_value(browser, script).await.as_ref().and_then(&accept)
    })
    .await
}

const LEADER: &str = "const e = document.getElementById('leader'); return e ? e.textContent : null;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_from_a_follower_shows_members_a_running_job_and_a_new_leader_after_a_kill() -> anyhow::Result<()>
{
    let (Some(chromium), Some(chromedriver)) = (installed("chromium"), installed("chromedriver")) else {
        anyhow::ensure!(
            std::env::var_os("RAFTSTREAM_REQUIRE_BROWSER").is_none(),
            "chromium and chromedriver are required (scripts/ensure-build-deps.sh --test installs them as root)"
        );
        eprintln!("skipped: chromium or chromedriver is not installed");
        return Ok(());
    };
    let mut cluster = TestCluster::start_with(test_settings(), fast_executors()).await?;
    let client = start_executors(&mut cluster, &[("exec-a", 2), ("exec-b", 2)]).await?;
    let spec = WordCountJob {
        records: 10_000_000,
        rate_per_second: Some(2_000),
        ..word_count(&cluster)
    };
    let submitted = client.submit_job(&spec.spec("wc-dashboard"), "wc-dashboard").await?;
    let job_id = submitted.job_id.clone();
    let leader = cluster.leader().await?;
    let follower = cluster.follower().await?;
    let page_address = cluster
        .cluster
        .node(follower)
        .map(|node| node.http_address.clone())
        .ok_or_else(|| anyhow::anyhow!("no node {follower}"))?;

    tracing::info!("--- the JSON API, asked of a follower, answers from the leader's view");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let api = |path: &str| {
        let url = format!("http://{page_address}/api/v1{path}");
        let http = http.clone();
        async move {
            let response = http.get(url).send().await?;
            let status = response.status().as_u16();
            let body: Value = serde_json::from_str(&response.text().await?)?;
            anyhow::Ok((status, body))
        }
    };
    let (status, view) = api("/cluster").await?;
    anyhow::ensure!(status == 200, "{view}");
    anyhow::ensure!(view["served_by"] == follower && view["leader_id"] == leader, "{view}");
    anyhow::ensure!(view["members"].as_array().map(Vec::len) == Some(3), "{view}");
    let executors = eventually("both executors in the API", PATIENCE, || async {
        let (_, view) = api("/executors").await.ok()?;
        (view["executors"].as_array()?.len() == 2).then_some(view)
    })
    .await?;
    anyhow::ensure!(executors["executors"][0]["slots"] == 2, "{executors}");
    let (status, malformed) = api("/jobs/no-such-job").await?;
    anyhow::ensure!(
        status == 400
            && malformed["error"]
                .as_str()
                .is_some_and(|error| error.contains("no-such-job")),
        "a malformed job id is a 400 naming it: {status} {malformed}"
    );
    let (status, missing) = api("/jobs/job-999999").await?;
    anyhow::ensure!(
        status == 404
            && missing["error"]
                .as_str()
                .is_some_and(|error| error.contains("job-999999")),
        "an unknown job is a 404 naming it: {status} {missing}"
    );
    eventually("the job with a checkpoint in the API", PATIENCE, || async {
        let (_, view) = api(&format!("/jobs/{job_id}")).await.ok()?;
        (view["status"] == "Running" && !view["checkpoints"].as_array()?.is_empty()).then_some(())
    })
    .await?;

    tracing::info!("--- the page in a headless Chromium, loaded from follower {follower}");
    let scratch = tempfile::tempdir()?;
    let driver = start_driver(&chromedriver, &scratch.path().join("chromedriver.log")).await?;
    let browser = open_browser(&driver, &chromium, &scratch.path().join("profile")).await?;
    let outcome = drive(&mut cluster, &browser, &page_address, &job_id, leader, follower).await;
    if outcome.is_err() {
        // What the page showed when the test gave up.
        let _ = screenshot(&browser, "failed").await;
    }
    let _ = browser.close().await;
    outcome
}

async fn drive(
    cluster: &mut TestCluster,
    browser: &Client,
    page_address: &str,
    job_id: &str,
    leader: u64,
    follower: u64,
) -> anyhow::Result<()> {
    let started = Instant::now();
    browser.goto(&format!("http://{page_address}/#/cluster")).await?;
    page_until(
        browser,
        "the first view to render",
        PATIENCE,
        "return document.body.dataset.loaded === 'true';",
        |loaded| (loaded == &Value::Bool(true)).then_some(()),
    )
    .await?;
    let first_load = started.elapsed();
    let navigation_ms = page_value(
        browser,
        "const n = performance.getEntriesByType('navigation')[0]; return n ? n.loadEventEnd - n.startTime : null;",
    )
    .await;
    tracing::info!(
        ?first_load,
        ?navigation_ms,
        "dashboard first load (to the first view rendered from the API)"
    );
    println!(
        "dashboard first load: {} ms to the first view rendered from the API (page load event {} ms)",
        first_load.as_millis(),
        navigation_ms
            .and_then(|value| value.as_f64())
            .map_or("?".to_owned(), |ms| format!("{ms:.0}"))
    );

    page_until(
        browser,
        "three members and the leader",
        PATIENCE,
        "return [document.querySelectorAll('#members tbody tr').length, (document.getElementById('leader') || {}).textContent];",
        |value| (value[0] == 3 && value[1] == leader.to_string()).then_some(()),
    )
    .await?;
    screenshot(browser, "1-cluster").await?;

    browser.goto(&format!("http://{page_address}/#/executors")).await?;
    page_until(
        browser,
        "both executors",
        PATIENCE,
        "return document.querySelectorAll('#executors tbody tr').length;",
        |rows| (rows == 2).then_some(()),
    )
    .await?;
    screenshot(browser, "2-executors").await?;

    browser.goto(&format!("http://{page_address}/#/jobs")).await?;
    page_until(
        browser,
        "the job in the list",
        PATIENCE,
        "return document.querySelectorAll('a.job-link').length;",
        |links| (links == 1).then_some(()),
    )
    .await?;
    screenshot(browser, "3-jobs").await?;

    browser.goto(&format!("http://{page_address}/#/jobs/{job_id}")).await?;
    let graph_script =
        "return Array.from(document.querySelectorAll('svg#job-graph g.operator')).map(g => g.dataset.operatorId);";
    let operators = page_until(browser, "the job graph", PATIENCE, graph_script, |ids| {
        let ids: Vec<String> = ids
            .as_array()?
            .iter()
            .filter_map(|id| id.as_str().map(str::to_owned))
            .collect();
        (ids.len() == 5).then_some(ids)
    })
    .await?;
    anyhow::ensure!(
        operators.contains(&"counts".to_owned()),
        "the graph draws every operator: {operators:?}"
    );
    // The word count at parallelism 2: two slices, two slots, whatever its subtask count.
    page_until(
        browser,
        "the job's slots",
        PATIENCE,
        "const slots = document.getElementById('job-slots'); return slots ? slots.textContent : null;",
        |slots| (slots.as_str() == Some("2/2")).then_some(()),
    )
    .await?;
    let checkpoint_script = "const row = document.querySelector('#checkpoints tbody tr'); return row ? Number(row.dataset.checkpointId) : null;";
    let first_checkpoint = page_until(
        browser,
        "a checkpoint in the list",
        PATIENCE,
        checkpoint_script,
        Value::as_u64,
    )
    .await?;
    let later = page_until(
        browser,
        "the checkpoints to advance",
        PATIENCE,
        checkpoint_script,
        |id| id.as_u64().filter(|id| *id > first_checkpoint),
    )
    .await?;
    tracing::info!(first_checkpoint, later, "the page shows checkpoints advancing");
    page_until(
        browser,
        "every subtask running",
        PATIENCE,
        "return Array.from(document.querySelectorAll('#subtasks tbody tr td:nth-child(4)')).map(td => td.textContent);",
        |states| {
            let states = states.as_array()?;
            (!states.is_empty() && states.iter().all(|state| state == "RUNNING")).then_some(())
        },
    )
    .await?;
    screenshot(browser, "4-job").await?;

    tracing::info!("--- kill -9 an executor: the job page shows the restart and its reason");
    cluster.cluster.kill_executor("exec-b")?;
    page_until(
        browser,
        "the restart on the job page",
        PATIENCE,
        "return Array.from(document.querySelectorAll('#restarts tbody tr')).map(tr => tr.textContent);",
        |rows| {
            let rows = rows.as_array()?;
            // The reason is the executor's death, or a peer's stream to it breaking first.
            rows.iter()
                .any(|row| row.as_str().is_some_and(|row| row.contains("restart 1: ")))
                .then_some(())
        },
    )
    .await?;
    page_until(
        browser,
        "the job running again on the other executor",
        PATIENCE,
        "return [document.getElementById('job-status').textContent, Array.from(document.querySelectorAll('#subtasks tbody tr td:nth-child(4)')).every(td => td.textContent === 'RUNNING')];",
        |value| (value[0] == "Running" && value[1] == true).then_some(()),
    )
    .await?;
    screenshot(browser, "5-job-after-executor-kill").await?;

    tracing::info!("--- kill -9 the leader: the page shows the new one");
    cluster.cluster.kill(leader)?;
    let killed_at = Instant::now();
    browser.goto(&format!("http://{page_address}/#/cluster")).await?;
    let new_leader = page_until(browser, "a new leader on the page", PATIENCE, LEADER, |text| {
        let id: u64 = text.as_str()?.parse().ok()?;
        (id != leader).then_some(id)
    })
    .await?;
    let shown_after = killed_at.elapsed();
    tracing::info!(new_leader, ?shown_after, "the page shows the new leader");
    anyhow::ensure!(
        shown_after < Duration::from_secs(10),
        "the new leader took {shown_after:?} to show"
    );
    screenshot(browser, "6-cluster-after-leader-kill").await?;

    browser.goto(&format!("http://{page_address}/#/timeline")).await?;
    page_until(
        browser,
        "the leader change and the executor death in the timeline",
        PATIENCE,
        &format!(
            "const rows = Array.from(document.querySelectorAll('#timeline tbody tr')).map(tr => tr.textContent); \
             return [rows.some(row => row.includes('node {new_leader} leads')), rows.some(row => row.includes('executor exec-b declared dead'))];"
        ),
        |found| (found[0] == true && found[1] == true).then_some(()),
    )
    .await?;
    screenshot(browser, "7-timeline").await?;

    tracing::info!("--- kill -9 the coordinator serving the page: it says so");
    cluster.cluster.kill(follower)?;
    page_until(
        browser,
        "the page to say its coordinator is unreachable",
        PATIENCE,
        "const b = document.getElementById('banner'); return b.className + '|' + b.textContent;",
        |banner| {
            let banner = banner.as_str()?;
            (banner.contains("unreachable") && banner.contains(page_address)).then_some(())
        },
    )
    .await?;
    screenshot(browser, "8-unreachable").await?;
    Ok(())
}
