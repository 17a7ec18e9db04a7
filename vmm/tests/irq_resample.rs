//! The virtio interrupt as a level-triggered line on the host's real in-kernel irqchip (any KVM,
//! PVM included): a tiny real-mode guest services a virtio-mmio transport's interrupt through
//! the 8259 PIC with its pin set level-triggered (ELCR), with the irqfd registered the way
//! vmm registers every virtio interrupt (`register_interrupt`) and the resample eventfd served
//! by vmm's own `InterruptResampler` in an event loop. The PIC is what a real-mode guest can
//! program; KVM lowers the line and signals the resample eventfd from the same EOI hook for the
//! IOAPIC, which Linux uses (that path needs the lab). Without the resampler the completion
//! raised between the handler's status read and its EOI is never delivered (checked by hand:
//! the first assertion below then fails with 1 interrupt instead of 2).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::virtio::{
    ActivateError, GuestMemoryMmap, InterruptSignal, MmioInterrupt, MmioTransport, QueueError,
    VirtioDevice,
};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vm_memory::{Bytes, GuestAddress};
use vmm::device_manager::legacy::{GuestControl, GUEST_EXIT_PORT};
use vmm::device_manager::{register_interrupt, InterruptResampler, TriggerMode};
use vmm::kvm::bus::{Bus, BusDevice};
use vmm::kvm::exit::{ExitReason, VmExit};
use vmm::kvm::vcpu::Vcpu;
use vmm::kvm::vm::Vm;
use vmm_sys_util::eventfd::EventFd;

const CODE_START: u64 = 0x1000;
const GUEST_MEMORY: u64 = 0x10000;
/// The device's IRQ: a PIC pin that can be level-triggered (ELCR), as virtio IRQs are.
const IRQ: u32 = 5;
/// Where the guest reaches the transport's registers, by 32-bit port I/O.
const TRANSPORT_PORT: u64 = 0x1000;
/// A guest write here makes the device complete a request (set VRING and assert the line).
const COMPLETE_PORT: u64 = 0x80;
/// The guest's count of interrupts handled, and from `STATUS_LOG` the status each one read.
const COUNT: u64 = 0x500;
const STATUS_LOG: u64 = 0x600;

/// Real mode, at CODE_START (gas, .code16):
/// ```text
///     cli; ds = ss = 0; sp = 0x8000; IVT[0x25] = 0:isr; [COUNT] = 0
///     PIC: ICW1 0x11, ICW2 0x20 (IRQ5 = vector 0x25), ICW3 4, ICW4 1
///     ELCR (0x4d0) = 0x20: IRQ5 level-triggered; mask all but IRQ5
///     out COMPLETE_PORT            ; the device's first completion
///     sti; 1: hlt; jmp 1b
/// isr:
///     eax = in TRANSPORT_PORT+0x60 ; InterruptStatus
///     [STATUS_LOG + COUNT] = al; COUNT += 1
///     out TRANSPORT_PORT+0x64, eax ; InterruptACK of what it read
///     if COUNT == 1: out COMPLETE_PORT  ; a completion after the status read, before the EOI
///     if COUNT == 3: out 0xf4, COUNT; hlt
///     out 0x20, 0x20 (EOI); iret
/// ```
const GUEST: [u8; 110] = [
    0xfa, 0x31, 0xc0, 0x8e, 0xd8, 0x8e, 0xd0, 0xbc, 0x00, 0x80, 0xc7, 0x06, 0x94, 0x00, 0x3b, 0x10,
    0xc7, 0x06, 0x96, 0x00, 0x00, 0x00, 0xc6, 0x06, 0x00, 0x05, 0x00, 0xb0, 0x11, 0xe6, 0x20, 0xb0,
    0x20, 0xe6, 0x21, 0xb0, 0x04, 0xe6, 0x21, 0xb0, 0x01, 0xe6, 0x21, 0xba, 0xd0, 0x04, 0xb0, 0x20,
    0xee, 0xb0, 0xdf, 0xe6, 0x21, 0xe6, 0x80, 0xfb, 0xf4, 0xeb, 0xfd, 0xba, 0x60, 0x10, 0x66, 0xed,
    0x31, 0xdb, 0x8a, 0x1e, 0x00, 0x05, 0x88, 0x87, 0x00, 0x06, 0xfe, 0x06, 0x00, 0x05, 0xba, 0x64,
    0x10, 0x66, 0xef, 0x80, 0x3e, 0x00, 0x05, 0x01, 0x75, 0x02, 0xe6, 0x80, 0x80, 0x3e, 0x00, 0x05,
    0x03, 0x73, 0x05, 0xb0, 0x20, 0xe6, 0x20, 0xcf, 0xa0, 0x00, 0x05, 0xe6, 0xf4, 0xf4,
];

/// A device with one queue that is never activated: the test raises its interrupts directly.
struct IdleDevice;

impl VirtioDevice for IdleDevice {
    fn device_type(&self) -> u32 {
        2
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16]
    }
    fn avail_features(&self) -> u64 {
        devices::virtio::VIRTIO_F_VERSION_1
    }
    fn acked_features(&self) -> u64 {
        0
    }
    fn set_acked_features(&mut self, _features: u64) {}
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(
        &mut self,
        _memory: GuestMemoryMmap,
        _queues: Vec<virtio_queue::Queue>,
        _interrupt: Arc<dyn InterruptSignal>,
    ) -> Result<(), ActivateError> {
        Err(ActivateError::AlreadyActivated)
    }
    fn is_activated(&self) -> bool {
        false
    }
    fn reset(&mut self) {}
    fn process_queue(&mut self, _queue_index: u16) -> Result<(), QueueError> {
        Ok(())
    }
}

/// The guest's "complete a request" port.
struct Completer(Arc<MmioInterrupt>);

impl BusDevice for Completer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) {
        self.0
            .signal_used_queue(0)
            .expect("the irqfd takes a write");
        // KVM asserts an irqfd's line from a workqueue: give it time to, before the guest
        // goes on to its EOI, so that the assertion surely meets a line that is still up.
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_level_triggered_virtio_interrupt_is_raised_again_after_eoi_until_acknowledged() {
    let vm = Vm::new(GUEST_MEMORY, true).expect("a VM with the in-kernel irqchip");
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let resample = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    assert_eq!(
        register_interrupt(&vm.fd, &irq, &resample, IRQ).unwrap(),
        TriggerMode::Level,
        "this KVM takes resample irqfds"
    );
    let transport = MmioTransport::new(vm.memory.clone(), Box::new(IdleDevice), Box::new(irq))
        .expect("a transport");
    let interrupt = transport.interrupt();
    let mut events: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().unwrap();
    events.add_subscriber(Arc::new(Mutex::new(InterruptResampler::new(
        interrupt.clone(),
        resample,
    ))));

    vm.memory
        .write_slice(&GUEST, GuestAddress(CODE_START))
        .unwrap();
    let fd = vm.fd.create_vcpu(0).unwrap();
    // LINT0 as ExtINT: the PIC reaches the vCPU.
    vmm::arch::regs::setup_common(&fd).unwrap();
    let mut sregs = fd.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    fd.set_sregs(&sregs).unwrap();
    fd.set_regs(&kvm_bindings::kvm_regs {
        rip: CODE_START,
        rflags: 2,
        ..Default::default()
    })
    .unwrap();
    let exit = Arc::new(VmExit::new().unwrap());
    let mut io_bus = Bus::new();
    io_bus
        .insert(
            u64::from(GUEST_EXIT_PORT),
            2,
            Arc::new(Mutex::new(GuestControl { exit: exit.clone() })),
        )
        .unwrap();
    io_bus
        .insert(
            COMPLETE_PORT,
            1,
            Arc::new(Mutex::new(Completer(interrupt.clone()))),
        )
        .unwrap();
    io_bus
        .insert(TRANSPORT_PORT, 0x100, Arc::new(Mutex::new(transport)))
        .unwrap();
    let vcpu = Vcpu {
        fd,
        index: 0,
        io_bus: Arc::new(io_bus),
        mmio_bus: Arc::new(Bus::new()),
        exit: exit.clone(),
    };
    // A vCPU that never gets its interrupt stays in KVM_RUN (hlt with an irqchip): the thread
    // is left behind and the deadlines below fail the test.
    std::thread::spawn(move || vcpu.run());

    let count = || vm.memory.read_obj::<u8>(GuestAddress(COUNT)).unwrap();
    let mut serve_until = |done: &dyn Fn() -> bool, within: Duration| {
        let deadline = Instant::now() + within;
        while !done() && Instant::now() < deadline {
            events.run_with_timeout(10).unwrap();
        }
    };
    // The first interrupt, then the completion its handler caused after reading the status:
    // that one's assertion met a line still up, and only the resample after the EOI delivers it.
    serve_until(&|| count() >= 2, Duration::from_secs(10));
    assert_eq!(
        count(),
        2,
        "the completion after the status read was delivered"
    );
    // Both acknowledged: after the second EOI the line stays down (a level-triggered PIC pin
    // still up would interrupt again at once).
    serve_until(&|| false, Duration::from_millis(200));
    assert_eq!(count(), 2, "no interrupt without a status bit set");
    assert_eq!(interrupt.status(), 0);

    interrupt.signal_config_change().unwrap();
    serve_until(&|| exit.reason().is_some(), Duration::from_secs(10));
    assert_eq!(exit.reason(), Some(ExitReason::GuestStatus(3)));
    let mut statuses = [0u8; 3];
    vm.memory
        .read_slice(&mut statuses, GuestAddress(STATUS_LOG))
        .unwrap();
    assert_eq!(statuses, [1, 1, 2], "VRING, VRING, then CONFIG");
}
