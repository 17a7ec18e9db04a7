//! virtio-fs (virtio 1.x §5.11) served by a vhost-user backend, such as virtiofsd.
//!
//! The device owns what the driver reads from vmm: the feature bits (the backend's, cut down to
//! what this transport supports), the config space (the tag and one request queue) and the
//! queue sizes. The backend process serves the queues itself, straight from guest memory, which
//! it maps from the memory table vmm sends (guest RAM must be file-backed and shared, e.g. a
//! memfd). Queue notifications go from the guest to the backend without passing through vmm
//! (`kick_event`: the VMM registers the kick eventfds as ioeventfds); completions come back on
//! one "call" eventfd per queue, which the device's thread turns into the virtio-mmio interrupt
//! (the transport's interrupt status register must be set, so the call cannot be an irqfd):
//! it sets VIRTIO_MMIO_INT_VRING and asserts the line like any other device, and the VMM's
//! resample handler keeps the line asserted until the driver acknowledges it.
//!
//! Everything that talks to the backend after setup runs on that thread: the driver's
//! activation and reset arrive on a vCPU thread, which only queues a command and wakes it, so
//! the vCPU threads' seccomp filter needs no socket calls. The thread also watches the
//! connection: a backend that goes away is reported through `on_failure`.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::virtio::{
    read_config_bytes, ActivateError, GuestMemoryMmap, InterruptSignal, QueueError, VirtioDevice,
    VIRTIO_F_VERSION_1,
};

/// Virtio device ID of a file system device.
pub const VIRTIO_ID_FS: u32 = 26;
/// Longest tag (virtio 1.x §5.11.4: 36 bytes, NUL-padded, not NUL-terminated when full).
pub const TAG_BYTES: usize = 36;
/// Queue 0 is the high-priority queue (FUSE interrupts and forgets), queue 1 the one request queue.
const QUEUES: usize = 2;
/// Largest queue size both virtiofsd implementations accept.
const QUEUE_SIZE: u16 = 1024;
/// vhost-user feature bit (not a virtio one): the backend speaks the protocol-feature messages,
/// and rings start disabled until SET_VRING_ENABLE.
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// The virtio features this device passes on from the backend to the driver.
const PASSED_FEATURES: u64 =
    VIRTIO_F_VERSION_1 | (1 << VIRTIO_RING_F_EVENT_IDX) | (1 << VIRTIO_RING_F_INDIRECT_DESC);

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("the virtio-fs tag '{0}' is empty or longer than {TAG_BYTES} bytes")]
    BadTag(String),
    #[error("vhost-user {0} failed")]
    Protocol(&'static str, #[source] vhost::Error),
    #[error("the vhost-user backend does not offer VIRTIO_F_VERSION_1")]
    NotVersion1,
    #[error("guest memory is not shareable with a vhost-user backend (it must be file-backed)")]
    MemoryNotShareable,
    #[error("the device's thread could not start: {0}")]
    ThreadStart(String),
    #[error("cannot create the device's {0}")]
    Setup(&'static str, #[source] std::io::Error),
}

/// The connection to a backend after the setup that does not depend on the driver: owner,
/// features, protocol features and the memory table.
pub struct FsBackend {
    frontend: Frontend,
    /// Virtio (and vhost-user) features the backend offers.
    features: u64,
    protocol: bool,
}

impl FsBackend {
    /// Takes a connected vhost-user socket and sends the backend everything it needs before a
    /// driver shows up, including every region of `memory`.
    pub fn handshake(stream: UnixStream, memory: &GuestMemoryMmap) -> Result<Self, FsError> {
        let mut frontend = Frontend::from_stream(stream, QUEUES as u64);
        let step = |what| move |e| FsError::Protocol(what, e);
        frontend.set_owner().map_err(step("SET_OWNER"))?;
        let features = frontend.get_features().map_err(step("GET_FEATURES"))?;
        if features & VIRTIO_F_VERSION_1 == 0 {
            return Err(FsError::NotVersion1);
        }
        let protocol = features & VHOST_USER_F_PROTOCOL_FEATURES != 0;
        if protocol {
            // Rings start disabled with protocol features; nothing else from the list is used.
            // (libvhost-user refuses a frontend whose features lack VERSION_1 as legacy.)
            frontend
                .set_features(VHOST_USER_F_PROTOCOL_FEATURES | VIRTIO_F_VERSION_1)
                .map_err(step("SET_FEATURES"))?;
            let offered = frontend
                .get_protocol_features()
                .map_err(step("GET_PROTOCOL_FEATURES"))?;
            frontend
                .set_protocol_features(offered & VhostUserProtocolFeatures::REPLY_ACK)
                .map_err(step("SET_PROTOCOL_FEATURES"))?;
        }
        let regions = memory
            .iter()
            .map(|region| {
                VhostUserMemoryRegionInfo::from_guest_region(region)
                    .map_err(|_| FsError::MemoryNotShareable)
            })
            .collect::<Result<Vec<_>, _>>()?;
        frontend
            .set_mem_table(&regions)
            .map_err(step("SET_MEM_TABLE"))?;
        Ok(Self {
            frontend,
            features,
            protocol,
        })
    }
}

/// What the vCPU side asks of the device's thread.
enum Command {
    Activate {
        features: u64,
        rings: Vec<Ring>,
        interrupt: Arc<dyn InterruptSignal>,
    },
    Reset,
    Stop,
}

/// One queue as the driver set it up, in guest addresses.
#[derive(Debug, Clone, Copy)]
struct Ring {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
}

/// A virtio-fs device whose queues a vhost-user backend serves.
pub struct VirtioFs {
    config: [u8; TAG_BYTES + 4],
    avail_features: u64,
    acked_features: u64,
    kicks: Vec<EventFd>,
    commands: mpsc::Sender<Command>,
    wake: EventFd,
    activated: bool,
    thread: Option<JoinHandle<()>>,
    tag: String,
}

impl VirtioFs {
    /// A device with `tag` over `backend`. `thread_start` runs first on the device's thread
    /// (e.g. to install its seccomp filter), and `new` waits for it; `on_failure` is called
    /// there, once, when the backend fails or goes away while the VM runs.
    pub fn new(
        tag: &str,
        backend: FsBackend,
        memory: GuestMemoryMmap,
        thread_start: Box<dyn FnOnce() -> Result<(), String> + Send>,
        on_failure: Box<dyn Fn(String) + Send>,
    ) -> Result<Self, FsError> {
        if tag.is_empty() || tag.len() > TAG_BYTES {
            return Err(FsError::BadTag(tag.to_string()));
        }
        let mut config = [0u8; TAG_BYTES + 4];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[TAG_BYTES..].copy_from_slice(&1u32.to_le_bytes());
        let eventfd = |what| EventFd::new(libc::EFD_NONBLOCK).map_err(|e| FsError::Setup(what, e));
        let kicks = (0..QUEUES)
            .map(|_| eventfd("queue kick eventfd"))
            .collect::<Result<Vec<_>, _>>()?;
        let calls = (0..QUEUES)
            .map(|_| eventfd("queue call eventfd"))
            .collect::<Result<Vec<_>, _>>()?;
        let wake = eventfd("wake-up eventfd")?;
        let worker = Worker {
            backend_features: backend.features,
            protocol: backend.protocol,
            frontend: backend.frontend,
            memory,
            kicks: kicks
                .iter()
                .map(|k| k.try_clone())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| FsError::Setup("queue kick eventfd", e))?,
            calls,
            wake: wake
                .try_clone()
                .map_err(|e| FsError::Setup("wake-up eventfd", e))?,
            started: false,
            interrupt: None,
            tag: tag.to_string(),
            on_failure,
        };
        let (commands, receiver) = mpsc::channel();
        let (started, start_result) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("virtiofs-{tag}"))
            .spawn(move || {
                let result = thread_start();
                let ok = result.is_ok();
                let _ = started.send(result);
                if ok {
                    worker.run(&receiver);
                }
            })
            .map_err(|e| FsError::Setup("thread", e))?;
        match start_result.recv() {
            Ok(Ok(())) => {}
            Ok(Err(message)) => return Err(FsError::ThreadStart(message)),
            Err(_) => return Err(FsError::ThreadStart("the thread ended".to_string())),
        }
        Ok(Self {
            config,
            avail_features: backend.features & PASSED_FEATURES,
            acked_features: 0,
            kicks,
            commands,
            wake,
            activated: false,
            thread: Some(thread),
            tag: tag.to_string(),
        })
    }

    fn send(&self, command: Command) {
        // The thread only ends on Stop or after reporting a failure; then there is no one to tell.
        if self.commands.send(command).is_ok() {
            let _ = self.wake.write(1);
        }
    }
}

impl VirtioDevice for VirtioFs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn debug_state(&self) -> String {
        format!(
            "virtio-fs tag {}: {}activated, features {:#x}",
            self.tag,
            if self.activated { "" } else { "not " },
            self.acked_features
        )
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; QUEUES]
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Both fields are read-only.
    }

    fn activate(
        &mut self,
        _memory: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<dyn InterruptSignal>,
    ) -> Result<(), ActivateError> {
        if self.activated {
            return Err(ActivateError::AlreadyActivated);
        }
        if queues.len() != QUEUES {
            return Err(ActivateError::QueueCount {
                expected: QUEUES,
                given: queues.len(),
            });
        }
        let rings = queues
            .iter()
            .map(|queue| Ring {
                size: queue.size(),
                desc: queue.desc_table(),
                avail: queue.avail_ring(),
                used: queue.used_ring(),
            })
            .collect();
        self.send(Command::Activate {
            features: self.acked_features,
            rings,
            interrupt,
        });
        self.activated = true;
        Ok(())
    }

    fn is_activated(&self) -> bool {
        self.activated
    }

    fn reset(&mut self) {
        if self.activated {
            self.send(Command::Reset);
        }
        self.activated = false;
        self.acked_features = 0;
    }

    fn process_queue(&mut self, queue_index: u16) -> Result<(), QueueError> {
        // Kicks normally reach the backend without vmm (`kick_event`); one that comes here
        // (no ioeventfd) is passed on.
        let kick = self
            .kicks
            .get(usize::from(queue_index))
            .ok_or(QueueError::UnknownQueue(queue_index))?;
        kick.write(1).map_err(QueueError::Interrupt)
    }

    fn kick_event(&self, queue_index: u16) -> Option<EventFd> {
        self.kicks.get(usize::from(queue_index))?.try_clone().ok()
    }

    fn shutdown(&mut self) -> std::io::Result<()> {
        self.send(Command::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        Ok(())
    }
}

/// The device's thread: the vhost-user connection after setup.
struct Worker {
    frontend: Frontend,
    backend_features: u64,
    protocol: bool,
    memory: GuestMemoryMmap,
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    wake: EventFd,
    /// Rings handed to the backend since the last reset.
    started: bool,
    interrupt: Option<Arc<dyn InterruptSignal>>,
    tag: String,
    on_failure: Box<dyn Fn(String) + Send>,
}

/// epoll tokens: the wake-up eventfd, the socket, then one per call eventfd.
const WAKE: u64 = 0;
const SOCKET: u64 = 1;
const FIRST_CALL: u64 = 2;

impl Worker {
    fn run(mut self, commands: &mpsc::Receiver<Command>) {
        if let Err(message) = self.serve(commands) {
            (self.on_failure)(format!("virtio-fs {}: {message}", self.tag));
        }
    }

    fn serve(&mut self, commands: &mpsc::Receiver<Command>) -> Result<(), String> {
        let epoll = Epoll::new().map_err(|e| format!("epoll_create failed: {e}"))?;
        let watch = |fd: i32, events: EventSet, token: u64| {
            epoll
                .ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
                .map_err(|e| format!("epoll_ctl failed: {e}"))
        };
        watch(self.wake.as_raw_fd(), EventSet::IN, WAKE)?;
        // Only a hang-up: the backend never writes on this socket unasked.
        watch(self.frontend.as_raw_fd(), EventSet::READ_HANG_UP, SOCKET)?;
        for (index, call) in self.calls.iter().enumerate() {
            watch(call.as_raw_fd(), EventSet::IN, FIRST_CALL + index as u64)?;
        }
        let mut ready = vec![EpollEvent::default(); QUEUES + 2];
        loop {
            let count = match epoll.wait(-1, &mut ready) {
                Ok(count) => count,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("epoll_wait failed: {e}")),
            };
            for event in &ready[..count] {
                match event.data() {
                    WAKE => {
                        let _ = self.wake.read();
                        while let Ok(command) = commands.try_recv() {
                            match command {
                                Command::Activate {
                                    features,
                                    rings,
                                    interrupt,
                                } => self.activate(features, &rings, interrupt)?,
                                Command::Reset => self.reset()?,
                                Command::Stop => return Ok(()),
                            }
                        }
                    }
                    SOCKET => {
                        return Err("the vhost-user backend (virtiofsd) closed its connection; \
                             did it exit?"
                            .to_string())
                    }
                    token => {
                        let queue = (token - FIRST_CALL) as usize;
                        if let Some(call) = self.calls.get(queue) {
                            let _ = call.read();
                        }
                        if let Some(interrupt) = &self.interrupt {
                            interrupt
                                .signal_used_queue(queue as u16)
                                .map_err(|e| format!("cannot interrupt the guest: {e}"))?;
                        }
                    }
                }
            }
        }
    }

    /// Hands the driver's rings to the backend: features, then each ring's size, addresses,
    /// start index and eventfds, the kick last but one and the enable last, so that the backend
    /// starts a ring only once it knows all of it.
    fn activate(
        &mut self,
        features: u64,
        rings: &[Ring],
        interrupt: Arc<dyn InterruptSignal>,
    ) -> Result<(), String> {
        let fail = |what: &str, e: vhost::Error| format!("vhost-user {what} failed: {e}");
        let backend_only = self.backend_features & VHOST_USER_F_PROTOCOL_FEATURES;
        self.frontend
            .set_features(features | backend_only)
            .map_err(|e| fail("SET_FEATURES", e))?;
        for (index, ring) in rings.iter().enumerate() {
            let host = |address: u64| -> Result<u64, String> {
                self.memory
                    .get_host_address(GuestAddress(address))
                    .map(|pointer| pointer as u64)
                    .map_err(|_| format!("queue {index} lies outside guest memory"))
            };
            let config = VringConfigData {
                queue_max_size: QUEUE_SIZE,
                queue_size: ring.size,
                flags: 0,
                desc_table_addr: host(ring.desc)?,
                used_ring_addr: host(ring.used)?,
                avail_ring_addr: host(ring.avail)?,
                log_addr: None,
            };
            self.frontend
                .set_vring_num(index, ring.size)
                .map_err(|e| fail("SET_VRING_NUM", e))?;
            self.frontend
                .set_vring_addr(index, &config)
                .map_err(|e| fail("SET_VRING_ADDR", e))?;
            self.frontend
                .set_vring_base(index, 0)
                .map_err(|e| fail("SET_VRING_BASE", e))?;
            self.frontend
                .set_vring_call(index, &self.calls[index])
                .map_err(|e| fail("SET_VRING_CALL", e))?;
            self.frontend
                .set_vring_kick(index, &self.kicks[index])
                .map_err(|e| fail("SET_VRING_KICK", e))?;
            if self.protocol {
                self.frontend
                    .set_vring_enable(index, true)
                    .map_err(|e| fail("SET_VRING_ENABLE", e))?;
            }
        }
        self.interrupt = Some(interrupt);
        self.started = true;
        Ok(())
    }

    /// The driver reset the device: the backend stops every ring (GET_VRING_BASE).
    fn reset(&mut self) -> Result<(), String> {
        self.interrupt = None;
        if !std::mem::take(&mut self.started) {
            return Ok(());
        }
        for index in 0..QUEUES {
            if self.protocol {
                self.frontend
                    .set_vring_enable(index, false)
                    .map_err(|e| format!("vhost-user SET_VRING_ENABLE failed: {e}"))?;
            }
            self.frontend
                .get_vring_base(index)
                .map_err(|e| format!("vhost-user GET_VRING_BASE failed: {e}"))?;
        }
        Ok(())
    }
}
