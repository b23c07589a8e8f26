//! The long-running daemon: scheduler, signals, reloads, alert delivery, graceful stop.
//!
//! One tokio loop sleeps until the earliest of: the next scheduled run, a pending reload, or
//! the next alert delivery; signals and file changes wake it. Jobs run on blocking threads
//! (SQLite and file work are synchronous) and report back over a channel.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use notify::Watcher;
use tokio::sync::{Notify, mpsc, watch};

use crate::alerts::{self, Alert, AlertEvent, Severity, Sink};
use crate::checks::values::SignalName;
use crate::config::{self, Config};
use crate::locks::Instance;
use crate::runner::{self, Outcome, Trigger};
use crate::state::State;

/// The longest the loop sleeps without looking at the wall clock again, so that a clock step
/// (NTP, suspend) delays a run by at most this much.
const MAX_SLEEP: Duration = Duration::from_secs(300);
/// File-change events arrive in bursts while an editor saves; wait this long for quiet.
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(400);

#[derive(Debug)]
enum Event {
    Hangup,
    Run(SignalName),
    Terminate,
    FileChanged,
    /// The price file of this `pricing` job (with `watch: true`) changed.
    PricesChanged(String),
    JobDone(String, Outcome),
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(config::ConfigErrors),
    #[error(transparent)]
    Locked(crate::locks::InstanceError),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Runs the daemon until it is told to stop.
pub fn run(config_path: &Path) -> Result<(), StartError> {
    let (config, warnings) = config::load(config_path).map_err(StartError::Config)?;
    crate::logging::init(&config.log);
    for w in warnings
        .into_iter()
        .chain(crate::jobs::advice(&config.jobs, config.settings().preset))
    {
        tracing::warn!("{w}");
    }
    // Handlers first: once the pid file exists, `kill -USR1 $(cat caretaker.pid)` must find
    // them installed, or the default action of the signal would end the daemon.
    let (events_tx, events) = mpsc::unbounded_channel();
    spawn_signal_thread(events_tx.clone())?;
    let instance = match Instance::acquire(&config.state_dir) {
        Ok(i) => i,
        Err(e @ crate::locks::InstanceError::Held { .. }) => return Err(StartError::Locked(e)),
        Err(crate::locks::InstanceError::Other(e)) => return Err(StartError::Other(e)),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        Daemon::start(config_path.to_path_buf(), config, events_tx, events)?
            .run()
            .await
    });
    // Jobs still running past shutdown_timeout are abandoned here; their temporary files
    // carry the temp marker and are swept at the next start.
    runtime.shutdown_timeout(Duration::from_millis(100));
    drop(instance);
    result.map_err(StartError::Other)
}

struct Daemon {
    config_path: PathBuf,
    config: Arc<Config>,
    state: Arc<State>,
    shutdown: Arc<AtomicBool>,
    running: HashSet<String>,
    next_due: HashMap<String, DateTime<Utc>>,
    /// Signal-triggered runs that came while the job was running: run once when it ends.
    queued: HashSet<String>,
    reload_at: Option<tokio::time::Instant>,
    events_tx: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
    sinks_tx: watch::Sender<Arc<Vec<Sink>>>,
    deliver: Arc<Notify>,
    /// The upload queue's loop: the configuration it works with, and its wake-up.
    uploads: (watch::Sender<Arc<Config>>, Arc<Notify>),
    _watcher: Option<notify::RecommendedWatcher>,
    /// One watcher per pricing job with `watch: true`; rebuilt on reload.
    price_watchers: Vec<notify::RecommendedWatcher>,
    /// Pricing jobs whose price file changed, and when the debounce lets them run.
    prices_due: HashMap<String, tokio::time::Instant>,
    /// A PostgreSQL gateway's advisory lock: without it this daemon is the standby.
    standby: Option<crate::gateway::postgres::standby::Standby>,
}

impl Daemon {
    fn start(
        config_path: PathBuf,
        config: Config,
        events_tx: mpsc::UnboundedSender<Event>,
        events: mpsc::UnboundedReceiver<Event>,
    ) -> anyhow::Result<Daemon> {
        let state = Arc::new(State::open(&config.state_dir)?);
        let now = Utc::now();
        let interrupted = state.close_interrupted_runs(now)?;
        if interrupted > 0 {
            tracing::warn!(
                runs = interrupted,
                "runs were interrupted by the last stop of the daemon; their jobs left no partial output that looks valid and will run again"
            );
        }
        let retried = alerts::retry_failed_now(&state, now)?;
        if retried > 0 {
            tracing::info!(
                deliveries = retried,
                "retrying undelivered alerts now instead of waiting for their backoff"
            );
        }
        let watcher = watch_file(&config_path, events_tx.clone(), || Event::FileChanged)
            .map_err(|e| {
                tracing::warn!(
                    "not watching {} for changes: {e:#}; reload with SIGHUP",
                    config_path.display()
                )
            })
            .ok();
        let sinks = Sink::from_settings(&config.alerts)?;
        let (sinks_tx, sinks_rx) = watch::channel(Arc::new(sinks));
        let deliver = Arc::new(Notify::new());
        tokio::spawn(delivery_loop(state.clone(), sinks_rx, deliver.clone()));
        let standby = config.settings().postgres.as_ref().map(|server| {
            crate::gateway::postgres::standby::Standby::start(
                server.clone(),
                &config.settings().table,
                server.standby_takeover,
                &config.state_dir,
            )
        });
        crate::remote::queue::retry_now(&state, now)?;
        let config = Arc::new(config);
        let (config_tx, config_rx) = watch::channel(config.clone());
        let upload_wake = Arc::new(Notify::new());
        tokio::spawn(crate::uploads::upload_loop(
            config_rx,
            state.clone(),
            upload_wake.clone(),
        ));
        Ok(Daemon {
            config_path,
            config,
            state,
            shutdown: Arc::new(AtomicBool::new(false)),
            running: HashSet::new(),
            next_due: HashMap::new(),
            queued: HashSet::new(),
            reload_at: None,
            events_tx,
            events,
            sinks_tx,
            deliver,
            uploads: (config_tx, upload_wake),
            _watcher: watcher,
            price_watchers: Vec::new(),
            prices_due: HashMap::new(),
            standby,
        })
    }

    /// Watches the price file of each pricing job with `watch: true`. The job itself reads
    /// and checks the file when it runs: an invalid file fails that run (alerted) and
    /// changes nothing.
    fn watch_prices(&mut self) {
        self.price_watchers.clear();
        for (job, path) in crate::jobs::watched_files(&self.config.jobs) {
            let tx = self.events_tx.clone();
            let name = job.clone();
            match watch_file(&path, tx, move || Event::PricesChanged(name.clone())) {
                Ok(w) => self.price_watchers.push(w),
                Err(e) => {
                    tracing::warn!(job = %job, "not watching the price file {}: {e:#}; the job runs on its schedule and signals only", path.display())
                }
            }
        }
    }

    fn run_price_changes(&mut self) {
        let now = tokio::time::Instant::now();
        let due: Vec<String> = self
            .prices_due
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            self.prices_due.remove(&name);
            if self.shutdown.load(Ordering::SeqCst) {
                continue;
            }
            tracing::info!(job = %name, "the price file changed");
            if self.running.contains(&name) {
                self.queued.insert(name);
            } else {
                self.spawn(&name, Trigger::FileChanged);
            }
        }
    }

    async fn run(mut self) -> anyhow::Result<()> {
        self.plan_schedule(Utc::now(), true);
        self.watch_prices();
        notify_systemd(&[sd_notify::NotifyState::Ready]);
        if let Some(interval) = sd_notify::watchdog_enabled() {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval / 2);
                loop {
                    tick.tick().await;
                    notify_systemd(&[sd_notify::NotifyState::Watchdog]);
                }
            });
        }
        tracing::info!(
            config = %self.config_path.display(),
            jobs = self.config.jobs.len(),
            pid = std::process::id(),
            "caretaker is running"
        );
        loop {
            self.fire_due(Utc::now());
            let sleep = self.sleep_duration(Utc::now());
            let reload_at = self.reload_at;
            let prices_at = self.prices_due.values().min().copied();
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = async { tokio::time::sleep_until(reload_at.expect("guarded")).await }, if reload_at.is_some() => {
                    self.reload_at = None;
                    self.reload("the jobs file changed");
                }
                _ = async { tokio::time::sleep_until(prices_at.expect("guarded")).await }, if prices_at.is_some() => {
                    self.run_price_changes();
                }
                Some(event) = self.events.recv() => match event {
                    Event::Hangup => self.reload("SIGHUP"),
                    Event::FileChanged => {
                        self.reload_at = Some(tokio::time::Instant::now() + RELOAD_DEBOUNCE);
                    }
                    Event::PricesChanged(job) => {
                        self.prices_due.insert(job, tokio::time::Instant::now() + RELOAD_DEBOUNCE);
                    }
                    Event::Run(signal) => self.on_signal(signal),
                    Event::JobDone(name, outcome) => self.job_done(name, outcome),
                    Event::Terminate => return self.stop().await,
                },
            }
        }
    }

    /// Computes each scheduled job's next run. At start-up, a job with `catch_up` whose last
    /// scheduled run was missed while the daemon was down runs once now.
    fn plan_schedule(&mut self, now: DateTime<Utc>, starting: bool) {
        let config = self.config.clone();
        self.next_due.clear();
        for job in &config.jobs {
            let Some(schedule) = &job.schedule else {
                continue;
            };
            let last_due = self.state.last_due(&job.name).unwrap_or(None);
            let previous = schedule.previous_at_or_before(now, config.timezone);
            match (last_due, previous) {
                (Some(last), Some(prev)) if prev > last && starting => {
                    if job.catch_up {
                        tracing::info!(job = %job.name, missed = %prev, "catching up a run missed while the daemon was down");
                        self.spawn(&job.name, Trigger::CatchUp(prev));
                    } else {
                        tracing::info!(job = %job.name, missed = %prev, "a run was missed while the daemon was down (catch_up is off)");
                    }
                    let _ = self.state.set_last_due(&job.name, prev);
                }
                (None, _) => {
                    // First sighting: remember now, so a later outage can be recognised.
                    let _ = self.state.set_last_due(&job.name, now);
                }
                _ => {}
            }
            if let Some(next) = schedule.next_after(now, config.timezone) {
                self.next_due.insert(job.name.clone(), next);
            }
        }
    }

    fn fire_due(&mut self, now: DateTime<Utc>) {
        if self.shutdown.load(Ordering::SeqCst) {
            return;
        }
        let due: Vec<(String, DateTime<Utc>)> = self
            .next_due
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(n, t)| (n.clone(), *t))
            .collect();
        let config = self.config.clone();
        for (name, at) in due {
            let Some(job) = config.job(&name) else {
                continue;
            };
            let _ = self.state.set_last_due(&name, at);
            if self.running.contains(&name) {
                // A run that waits for another job's gateway lock has not started its work:
                // say so, and whose lock it waits for.
                match job
                    .kind
                    .touches_gateway()
                    .then(|| crate::locks::gateway_holder(&config.state_dir))
                    .flatten()
                    .filter(|holder| *holder != name)
                {
                    Some(holder) => {
                        tracing::warn!(job = %name, due = %at, "skipped a scheduled run: the previous run is still queued, waiting for the gateway lock held by job `{holder}`")
                    }
                    None => {
                        tracing::warn!(job = %name, due = %at, "skipped a scheduled run: the previous run is still going")
                    }
                }
            } else {
                self.spawn(&name, Trigger::Schedule(at));
            }
            // From `now`, not `at`: after a long stall (suspend) the job runs once, not once
            // per missed slot.
            match job
                .schedule
                .as_ref()
                .and_then(|s| s.next_after(now, config.timezone))
            {
                Some(next) => self.next_due.insert(name, next),
                None => self.next_due.remove(&name),
            };
        }
    }

    fn sleep_duration(&self, now: DateTime<Utc>) -> Duration {
        self.next_due
            .values()
            .min()
            .map(|t| (*t - now).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP)
    }

    fn on_signal(&mut self, signal: SignalName) {
        if self.shutdown.load(Ordering::SeqCst) {
            return;
        }
        let config = self.config.clone();
        let bound: Vec<&str> = config
            .jobs
            .iter()
            .filter(|j| j.on_signal.contains(&signal))
            .map(|j| j.name.as_str())
            .collect();
        tracing::info!(signal = %signal, jobs = ?bound, "signal received");
        for name in bound {
            if self.running.contains(name) {
                // Signals coalesce: one more run after the current one, however many came.
                tracing::info!(job = %name, "already running; it runs once more when it ends");
                self.queued.insert(name.to_string());
            } else {
                self.spawn(name, Trigger::Signal(signal));
            }
        }
    }

    fn spawn(&mut self, name: &str, trigger: Trigger) {
        let config = self.config.clone();
        let Some(job) = config.job(name).cloned() else {
            return;
        };
        if job.kind.touches_gateway() && self.standby.as_ref().is_some_and(|s| !s.is_active()) {
            tracing::info!(job = %name, %trigger, "not run here: this daemon is the standby (another daemon holds the gateway's advisory lock)");
            return;
        }
        self.running.insert(name.to_string());
        let state = self.state.clone();
        let shutdown = self.shutdown.clone();
        let tx = self.events_tx.clone();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || {
            let outcome = runner::run(&config, &state, &job, trigger, false, shutdown);
            let _ = tx.send(Event::JobDone(name, outcome));
        });
    }

    fn job_done(&mut self, name: String, outcome: Outcome) {
        tracing::debug!(job = %name, result = ?outcome.result, "job finished");
        self.running.remove(&name);
        self.deliver.notify_one();
        self.uploads.1.notify_one();
        if self.queued.remove(&name) && !self.shutdown.load(Ordering::SeqCst) {
            self.spawn(&name, Trigger::Manual);
        }
    }

    fn reload(&mut self, why: &str) {
        notify_systemd(&[sd_notify::NotifyState::Reloading]);
        let now = Utc::now();
        match load_guarded(&self.config_path) {
            Ok((new, warnings)) => {
                for w in warnings {
                    tracing::warn!("{w}");
                }
                if new.state_dir != self.config.state_dir {
                    tracing::warn!(
                        "state_dir changed to {}; it takes effect at the next restart",
                        new.state_dir.display()
                    );
                }
                let mut new = new;
                new.state_dir = self.config.state_dir.clone();
                match Sink::from_settings(&new.alerts) {
                    Ok(sinks) => {
                        let _ = self.sinks_tx.send(Arc::new(sinks));
                    }
                    Err(e) => tracing::error!("alert sinks not rebuilt: {e:#}"),
                }
                self.config = Arc::new(new);
                let _ = self.uploads.0.send(self.config.clone());
                self.plan_schedule(now, false);
                self.watch_prices();
                self.raise(vec![AlertEvent::Resolve {
                    key: "config-invalid".into(),
                    job: None,
                    what: "the jobs file is invalid".into(),
                }]);
                tracing::info!(
                    reason = why,
                    jobs = self.config.jobs.len(),
                    "configuration reloaded"
                );
            }
            Err(errors) => {
                tracing::error!(
                    reason = why,
                    "the new jobs file is invalid; the old configuration keeps running:\n{errors}"
                );
                self.raise(vec![AlertEvent::Raise(Alert {
                    key: "config-invalid".into(),
                    severity: Severity::Warning,
                    job: None,
                    what: "the jobs file is invalid".into(),
                    body: format!(
                        "caretaker refused to reload {} ({why}); the previous configuration keeps running.\n\n{errors}\n\nFix the file and reload again (SIGHUP or save it); `caretaker check` shows the same errors.",
                        self.config_path.display()
                    ),
                })]);
            }
        }
        notify_systemd(&[sd_notify::NotifyState::Ready]);
    }

    fn raise(&self, events: Vec<AlertEvent>) {
        let sinks = runner::sink_names(&self.config);
        if let Err(e) = alerts::submit(
            &self.state,
            &self.config.alerts,
            &sinks,
            Utc::now(),
            &events,
        ) {
            tracing::error!("could not queue an alert: {e:#}");
        }
        self.deliver.notify_one();
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        notify_systemd(&[sd_notify::NotifyState::Stopping]);
        self.shutdown.store(true, Ordering::SeqCst);
        let timeout = self.config.shutdown_timeout;
        tracing::info!(running = ?self.running, timeout_s = timeout.as_secs(), "stopping: no new runs; running jobs stop at their next safe point");
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.running.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(running = ?self.running, "shutdown_timeout passed; exiting with jobs unfinished (they leave no partial output that looks valid)");
                    break;
                }
                Some(event) = self.events.recv() => match event {
                    Event::JobDone(name, _) => { self.running.remove(&name); }
                    Event::Terminate => {
                        tracing::warn!("second stop signal: exiting at once");
                        break;
                    }
                    _ => {}
                },
            }
        }
        tracing::info!("caretaker stopped");
        Ok(())
    }
}

/// Reads the jobs file for a reload. The reader bounds what a file can cost (size, values,
/// nesting, alias copies) and refuses bad values with errors; should it still panic on some
/// input, the panic is caught here and becomes one more refused reload: the old
/// configuration keeps running, as the contract says.
fn load_guarded(path: &Path) -> Result<(Config, Vec<String>), config::ConfigErrors> {
    std::panic::catch_unwind(|| config::load(path)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(config::ConfigErrors::single(config::ConfigError::io(
            path,
            format!("reading the jobs file failed inside caretaker ({what}); this is a bug, please report it with the file"),
        )))
    })
}

async fn delivery_loop(
    state: Arc<State>,
    sinks: watch::Receiver<Arc<Vec<Sink>>>,
    wake: Arc<Notify>,
) {
    loop {
        let current = sinks.borrow().clone();
        if let Err(e) = alerts::deliver_due(&state, &current, Utc::now()).await {
            tracing::error!("alert delivery: {e:#}");
        }
        let sleep = match alerts::next_delivery(&state) {
            Ok(Some(t)) => (t - Utc::now())
                .to_std()
                .unwrap_or(Duration::from_millis(10)),
            _ => MAX_SLEEP,
        }
        .min(MAX_SLEEP);
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = wake.notified() => {}
        }
    }
}

fn spawn_signal_thread(tx: mpsc::UnboundedSender<Event>) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGHUP, SIGUSR1, SIGUSR2, SIGTERM, SIGINT])
            .context("installing signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            // Signals of one kind merge while pending; each is a request, never a count.
            for signal in signals.forever() {
                let event = match signal {
                    SIGHUP => Event::Hangup,
                    SIGUSR1 => Event::Run(SignalName::Usr1),
                    SIGUSR2 => Event::Run(SignalName::Usr2),
                    _ => Event::Terminate,
                };
                if tx.send(event).is_err() {
                    break;
                }
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// Watches a file's directory (editors replace files by rename, which a watch on the file
/// itself would miss) and sends `make_event()` when the file changes.
fn watch_file(
    path: &Path,
    tx: mpsc::UnboundedSender<Event>,
    make_event: impl Fn() -> Event + Send + 'static,
) -> anyhow::Result<notify::RecommendedWatcher> {
    let path = std::path::absolute(path)?;
    let dir = path
        .parent()
        .with_context(|| format!("{} has no directory", path.display()))?
        .to_path_buf();
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?
        .to_os_string();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res
            && !event.kind.is_access()
            && event.paths.iter().any(|p| p.file_name() == Some(&name))
        {
            let _ = tx.send(make_event());
        }
    })?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

fn notify_systemd(state: &[sd_notify::NotifyState<'_>]) {
    // Without NOTIFY_SOCKET this is a no-op; with one, a failure is worth a line but not a stop.
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!("sd_notify: {e}");
    }
}
