//! Building a thread's monoio runtime: io_uring with the configured ring setup, or the legacy
//! epoll driver where the kernel refuses io_uring. Owns the driver choice; knows nothing of shards.

/// Which monoio driver the shards run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverKind {
    /// io_uring, falling back to the legacy (epoll) driver with one warning.
    Auto,
    IoUring,
    Legacy,
}

/// How the kernel runs a shard's io_uring completion work (`server.io_uring_taskrun`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskRun {
    /// COOP_TASKRUN + TASKRUN_FLAG + SINGLE_ISSUER: completion work runs when the shard next
    /// enters the kernel, not through an interrupt per completion (kernel 6.0+).
    Coop,
    /// `Coop` plus DEFER_TASKRUN: completion work waits until the shard waits for events (6.1+).
    Defer,
    /// The kernel's default: completion work signalled to the shard as it happens.
    Kernel,
}

impl TaskRun {
    pub fn name(self) -> &'static str {
        match self {
            TaskRun::Coop => "coop",
            TaskRun::Defer => "defer",
            TaskRun::Kernel => "kernel",
        }
    }
}

/// What a shard's (or the demo upstream's) runtime is built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingOpts {
    pub driver: DriverKind,
    pub entries: u32,
    pub taskrun: TaskRun,
}

/// Builds the runtime `ring` asks for and runs `main` on it. io_uring is preferred; where the
/// kernel refuses it (old kernel, seccomp, io_uring_disabled) the epoll driver takes over, with
/// one log line. `main` gets the driver's name, e.g. `io_uring (taskrun coop)` or `legacy`.
pub fn block_on<F, Fut>(ring: RingOpts, main: F)
where
    F: FnOnce(&str) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    if ring.driver != DriverKind::Legacy {
        let mut taskrun = ring.taskrun;
        let built = loop {
            match uring_runtime(ring.entries, taskrun) {
                Ok(rt) => break Ok(rt),
                // Setup flags newer than the kernel: say so once and use the kernel's default.
                Err(e) if taskrun != TaskRun::Kernel => {
                    static ONCE: std::sync::Once = std::sync::Once::new();
                    ONCE.call_once(|| {
                        log::warn!(
                            "io_uring_taskrun = {:?} refused by the kernel ({e}); using \"kernel\"",
                            taskrun.name()
                        )
                    });
                    taskrun = TaskRun::Kernel;
                }
                Err(e) => break Err(e),
            }
        };
        match built {
            Ok(mut rt) => {
                let name = format!("io_uring (taskrun {})", taskrun.name());
                rt.block_on(main(&name));
                return;
            }
            Err(e) => {
                static ONCE: std::sync::Once = std::sync::Once::new();
                ONCE.call_once(|| {
                    log::warn!(
                        "io_uring unavailable ({e}); falling back to the legacy epoll driver"
                    )
                });
            }
        }
    }
    match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
    {
        Ok(mut rt) => rt.block_on(main("legacy")),
        Err(e) => log::error!("cannot build any runtime: {e}"),
    }
}

/// An io_uring runtime whose ring runs completion work as `taskrun` says. A shard submits
/// only from its own thread, which is what SINGLE_ISSUER promises the kernel; without
/// COOP_TASKRUN every completion interrupts the shard to run its task work (measured: ~20%
/// more requests/s per core with it, perf/RESULTS.md).
fn uring_runtime(
    entries: u32,
    taskrun: TaskRun,
) -> std::io::Result<monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>> {
    let mut urb = io_uring::IoUring::builder();
    if taskrun != TaskRun::Kernel {
        urb.setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_single_issuer();
    }
    if taskrun == TaskRun::Defer {
        urb.setup_defer_taskrun();
    }
    monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(entries)
        .uring_builder(urb)
        .enable_timer()
        .build()
}
