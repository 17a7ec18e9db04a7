//! Runs tiny real-mode guest programs on the host's KVM (no Linux, so this works on PVM too) and
//! checks that the vCPU loop routes port I/O and MMIO exits to the right device and ends the VM
//! for the right reason.

use std::sync::{Arc, Mutex};

use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};
use vmm::arch::layout::ACPI_POWER_PORT;
use vmm::device_manager::legacy::{AcpiPowerControl, GuestControl, GUEST_EXIT_PORT};
use vmm::kvm::bus::{Bus, BusDevice};
use vmm::kvm::exit::{ExitReason, VmExit};
use vmm::kvm::vcpu::Vcpu;
use vmm::kvm::vm::Vm;

const CODE_START: u64 = 0x1000;
const GUEST_MEMORY: u64 = 0x10000;
/// Where the test's MMIO device sits: the first address past guest RAM.
const MMIO_TEST_BASE: u64 = GUEST_MEMORY;

/// Records MMIO writes and answers reads with `offset + 0x40`.
#[derive(Default)]
struct MmioProbe {
    writes: Vec<(u64, u8)>,
}

impl BusDevice for MmioProbe {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(offset as u8 + 0x40);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.writes.push((offset, data[0]));
    }
}

fn real_mode_vcpu(vm: &Vm, code: &[u8]) -> VcpuFd {
    vm.memory
        .write_slice(code, GuestAddress(CODE_START))
        .expect("code fits in guest memory");
    let vcpu = vm.fd.create_vcpu(0).expect("KVM_CREATE_VCPU");
    let mut sregs = vcpu.get_sregs().expect("KVM_GET_SREGS");
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).expect("KVM_SET_SREGS");
    let regs = kvm_bindings::kvm_regs {
        rip: CODE_START,
        rflags: 2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).expect("KVM_SET_REGS");
    vcpu
}

/// A vCPU of `vm` that runs `code` in real mode, with the exit port and the ACPI power register
/// on its I/O bus and `mmio_bus` for its MMIO.
fn guest_vcpu(vm: &Vm, code: &[u8], exit: &Arc<VmExit>, mmio_bus: Bus) -> Vcpu {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "these tests need /dev/kvm (any KVM, PVM included)"
    );
    let fd = real_mode_vcpu(vm, code);
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
            u64::from(ACPI_POWER_PORT),
            1,
            Arc::new(Mutex::new(AcpiPowerControl { exit: exit.clone() })),
        )
        .unwrap();
    Vcpu {
        fd,
        index: 0,
        io_bus: Arc::new(io_bus),
        mmio_bus: Arc::new(mmio_bus),
        exit: exit.clone(),
    }
}

/// Runs `code` to its end and returns why the VM stopped, with the MMIO probe.
fn run_guest(code: &[u8]) -> (ExitReason, Arc<Mutex<MmioProbe>>) {
    let vm = Vm::new(GUEST_MEMORY, false).expect("create VM");
    let exit = Arc::new(VmExit::new().unwrap());
    let probe = Arc::new(Mutex::new(MmioProbe::default()));
    let mut mmio_bus = Bus::new();
    mmio_bus
        .insert(MMIO_TEST_BASE, 0x1000, probe.clone())
        .unwrap();
    guest_vcpu(&vm, code, &exit, mmio_bus).run();
    (
        exit.reason().expect("the vCPU loop reports why it stopped"),
        probe,
    )
}

#[test]
fn out_to_the_exit_port_sets_the_guest_status() {
    // mov al, 7; out 0xf4, al; hlt
    let (reason, _) = run_guest(&[0xb0, 0x07, 0xe6, 0xf4, 0xf4]);
    assert_eq!(reason, ExitReason::GuestStatus(7));
}

#[test]
fn unclaimed_port_reads_all_ones() {
    // in al, 0x80; out 0xf4, al; hlt
    let (reason, _) = run_guest(&[0xe4, 0x80, 0xe6, 0xf4, 0xf4]);
    assert_eq!(reason, ExitReason::GuestStatus(0xff));
}

#[test]
fn hlt_without_irqchip_stops_the_vm() {
    let (reason, _) = run_guest(&[0xf4]);
    assert_eq!(reason, ExitReason::Halted);
}

#[test]
fn mmio_reads_and_writes_reach_the_device_at_the_right_offset() {
    let code = [
        0xb8, 0x00, 0x10, // mov ax, 0x1000
        0x8e, 0xd8, // mov ds, ax      (ds base = 0x10000 = MMIO_TEST_BASE)
        0xc6, 0x06, 0x10, 0x00, 0x5a, // mov byte [0x10], 0x5a
        0xa0, 0x04, 0x00, // mov al, [0x4]  (probe answers 0x44)
        0xe6, 0xf4, // out 0xf4, al
        0xf4, // hlt
    ];
    let (reason, probe) = run_guest(&code);
    assert_eq!(reason, ExitReason::GuestStatus(0x44));
    assert_eq!(probe.lock().unwrap().writes, vec![(0x10, 0x5a)]);
}

/// `mov dx, ACPI_POWER_PORT; mov al, value; out dx, al`, then what follows.
fn acpi_power_write(value: u8, then: &[u8]) -> Vec<u8> {
    let [port_lo, port_hi] = ACPI_POWER_PORT.to_le_bytes();
    let mut code = vec![0xba, port_lo, port_hi, 0xb0, value, 0xee];
    code.extend_from_slice(then);
    code
}

#[test]
fn acpi_s5_sleep_request_powers_off_and_the_reset_value_resets() {
    // SLP_EN | SLP_TYP 5, as Linux's acpi_power_off writes it; hlt.
    let (reason, _) = run_guest(&acpi_power_write(0x34, &[0xf4]));
    assert_eq!(reason, ExitReason::Shutdown);
    let (reason, _) = run_guest(&acpi_power_write(0x01, &[0xf4]));
    assert_eq!(reason, ExitReason::Reset);
}

#[test]
fn acpi_wake_status_clear_and_status_read_keep_the_vm_running() {
    // out WAK_STS (0x80); in al, dx (status reads 0); out 0xf4, al; hlt
    let (reason, _) = run_guest(&acpi_power_write(0x80, &[0xec, 0xe6, 0xf4, 0xf4]));
    assert_eq!(reason, ExitReason::GuestStatus(0));
}

#[test]
fn held_back_ram_waits_for_its_contents_then_reaches_the_vm() {
    use vmm::boot::held_back::{Filling, HeldBackRam};
    const HELD_BACK: std::ops::Range<u64> = 0x8000..0x9000;
    let memory = vmm::kvm::vm::guest_memory(GUEST_MEMORY).unwrap();
    let (vm, slot) = Vm::with_memory(memory, false, Some(HELD_BACK)).unwrap();
    let slot = slot.unwrap();
    assert_eq!(slot.range(), HELD_BACK);
    let code = [
        0xb8, 0x00, 0x08, // mov ax, 0x800
        0x8e, 0xd8, // mov ds, ax      (ds base = 0x8000, held back)
        0xc6, 0x06, 0x20, 0x00, 0x33, // mov byte [0x20], 0x33
        0xa0, 0x10, 0x00, // mov al, [0x10]  (0x77 once filled)
        0xe6, 0xf4, // out 0xf4, al
        0xf4, // hlt
    ];
    let exit = Arc::new(VmExit::new().unwrap());
    let filling = Filling::new();
    let mut mmio_bus = Bus::new();
    let ram = HeldBackRam::new(
        HELD_BACK.start,
        vm.memory.clone(),
        filling.clone(),
        exit.clone(),
    );
    mmio_bus
        .insert(HELD_BACK.start, 0x1000, Arc::new(Mutex::new(ram)))
        .unwrap();
    let vcpu = guest_vcpu(&vm, &code, &exit, mmio_bus);
    let guest = std::thread::spawn(move || vcpu.run());
    // Fill only once the guest is waiting, as the late-initrd hook does on a real kernel.
    assert!(filling.wait_until_touched(std::time::Duration::from_secs(10)));
    vm.memory
        .write_slice(&[0x77; 0x100], GuestAddress(HELD_BACK.start))
        .unwrap();
    slot.map(&vm).unwrap();
    filling.finish(true);
    guest.join().unwrap();
    assert_eq!(exit.reason(), Some(ExitReason::GuestStatus(0x77)));
    let written: u8 = vm
        .memory
        .read_obj(GuestAddress(HELD_BACK.start + 0x20))
        .unwrap();
    assert_eq!(
        written, 0x33,
        "the early write lands on top of the contents"
    );
}
