//! The few legacy devices a Linux guest needs: a 16550 serial console (vm-superio), the keyboard
//! controller's reset line, the ACPI power register (poweroff and reset of an ACPI guest), and
//! the guest-control ports through which the guest reports its exit status and the moment
//! userspace starts.

use std::io::Write;
use std::sync::{Arc, Mutex};

use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::host::timing;
use crate::kvm::bus::{lock, BusDevice};
use crate::kvm::exit::{ExitReason, VmExit};

/// Port of the guest-control device: a byte written here is the guest command's exit status.
pub const GUEST_EXIT_PORT: u16 = 0xf4;
/// A write to the second guest-control port marks "guest userspace reached".
pub const GUEST_MARKER_PORT: u16 = 0xf5;
/// i8042 command port; the command 0xfe pulses the CPU reset line.
pub const I8042_COMMAND_PORT: u16 = 0x64;
const I8042_DATA_PORT: u16 = 0x60;
const I8042_CMD_RESET: u8 = 0xfe;

/// The serial port's interrupt (vm-superio's `Trigger`): one edge on its IRQ per write of an
/// eventfd registered with KVM as a plain irqfd. Not to be confused with
/// `devices::virtio::IrqTrigger`, a virtio device's line, which a resample irqfd holds asserted
/// until the guest's EOI.
pub struct SerialIrq(pub EventFd);

impl Trigger for SerialIrq {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Tells the event loop when the guest has drained the serial input FIFO, so that buffered
/// host input can be fed in.
pub struct SerialInputDrained(pub EventFd);

impl SerialEvents for SerialInputDrained {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        let _ = self.0.write(1);
    }
}

/// Guest console output, line-buffered: full lines are written at once from the vCPU thread, a
/// partial line (a shell prompt) is flushed by the event loop shortly after `pending` fires.
pub struct ConsoleOutput {
    out: Box<dyn Write + Send>,
    buffer: Vec<u8>,
    pending: EventFd,
}

impl ConsoleOutput {
    const MAX_BUFFER: usize = 4096;

    pub fn new(out: Box<dyn Write + Send>) -> std::io::Result<Self> {
        Ok(Self {
            out,
            buffer: Vec::with_capacity(Self::MAX_BUFFER),
            pending: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Readable when a partial line waits to be flushed.
    pub fn pending_event(&self) -> &EventFd {
        &self.pending
    }

    pub fn flush_now(&mut self) {
        if !self.buffer.is_empty() {
            // Console output is best effort: a closed stdout must not stop the guest.
            let _ = self.out.write_all(&self.buffer);
            let _ = self.out.flush();
            self.buffer.clear();
        }
    }
}

/// The writer handed to the serial device.
pub struct SharedConsole(pub Arc<Mutex<ConsoleOutput>>);

impl Write for SharedConsole {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut console = lock(&self.0);
        let was_empty = console.buffer.is_empty();
        console.buffer.extend_from_slice(data);
        if data.contains(&b'\n') || console.buffer.len() >= ConsoleOutput::MAX_BUFFER {
            console.flush_now();
        } else if was_empty {
            let _ = console.pending.write(1);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // vm-superio flushes after every byte; batching is the point of this writer.
        Ok(())
    }
}

pub type SerialPort = Serial<SerialIrq, SerialInputDrained, SharedConsole>;

/// 16550 registers the console input gate watches.
const UART_IER: u64 = 1;
const UART_LCR: u64 = 3;
const UART_IER_RDI: u8 = 0x01;
const UART_IER_PROBE: u8 = 0x0f;
const UART_LCR_DLAB: u8 = 0x80;

/// COM1 on the I/O bus. Host input is held back until the guest driver enables the
/// receive-data interrupt: Linux's 8250 driver reads (and drops) RX a few times while it starts
/// up, so bytes fed in earlier (piped stdin, keys typed during boot) would be lost.
pub struct SerialDevice {
    pub serial: SerialPort,
    /// Written when the guest enables receive interrupts, so the event loop feeds held input.
    input_ready: EventFd,
    rx_enabled: bool,
    dlab: bool,
    /// The serial interrupt's irqfd, to raise a lost interrupt again.
    irq: EventFd,
    /// IIR reads so far, and their count when an enabled interrupt was last seen pending.
    iir_reads: u64,
    pending_at_reads: Option<u64>,
}

/// 16550 interrupt identification bits vm-superio sets, and the IER bits that enable them.
const UART_IIR: u64 = 2;
const UART_IIR_THRI: u8 = 0x02;
const UART_IIR_RDI: u8 = 0x04;
const UART_IER_THRI: u8 = 0x02;

impl SerialDevice {
    pub fn new(serial: SerialPort, input_ready: EventFd, irq: EventFd) -> Self {
        Self {
            serial,
            input_ready,
            rx_enabled: false,
            dlab: false,
            irq,
            iir_reads: 0,
            pending_at_reads: None,
        }
    }

    /// Called periodically: the serial interrupt is an edge (irqfd) and vm-superio raises it
    /// only when an IIR bit goes from clear to set, so one lost edge would leave the guest
    /// waiting forever (a console write blocks the writer). An enabled interrupt still pending
    /// with no IIR read since the last call is raised again. Returns whether it was.
    pub fn check_lost_interrupt(&mut self) -> bool {
        let state = self.serial.state();
        let (iir, ier) = (state.interrupt_identification, state.interrupt_enable);
        let pending = (iir & UART_IIR_THRI != 0 && ier & UART_IER_THRI != 0)
            || (iir & UART_IIR_RDI != 0 && ier & UART_IER_RDI != 0);
        let lost = pending && self.pending_at_reads == Some(self.iir_reads);
        if lost {
            let _ = self.irq.write(1);
        }
        self.pending_at_reads = pending.then_some(self.iir_reads);
        lost
    }

    /// Whether the guest is ready for input.
    pub fn accepts_input(&self) -> bool {
        self.rx_enabled
    }

    /// One line for a state dump: the registers that decide whether the guest gets interrupts.
    pub fn debug_state(&self) -> String {
        let state = self.serial.state();
        format!(
            "IER {:#04x} IIR {:#04x} LSR {:#04x} MCR {:#04x} rx-fifo {} input-enabled {}",
            state.interrupt_enable,
            state.interrupt_identification,
            state.line_status,
            state.modem_control,
            state.in_buffer.len(),
            self.rx_enabled
        )
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset == UART_IIR {
            self.iir_reads += 1;
        }
        if let (Some(first), Ok(offset)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.serial.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Some(&value), Ok(register)) = (data.first(), u8::try_from(offset)) else {
            return;
        };
        match offset {
            UART_LCR => self.dlab = value & UART_LCR_DLAB != 0,
            // 0x0f is the 8250 driver's probe for the register's existence, written and undone
            // before the port starts: its later startup still does dummy reads of RX.
            UART_IER if !self.dlab && value != UART_IER_PROBE => {
                let enabled = value & UART_IER_RDI != 0;
                if enabled && !self.rx_enabled {
                    let _ = self.input_ready.write(1);
                }
                self.rx_enabled = enabled;
            }
            _ => {}
        }
        // The only error is a failed interrupt trigger; the guest then sees a lost interrupt,
        // as with real hardware, and its driver's timeout recovers.
        let _ = self.serial.write(register, value);
    }
}

/// Just enough of the i8042 keyboard controller for `reboot=k`: status reads as idle, and the
/// reset command ends the VM.
pub struct I8042Reset {
    pub exit: Arc<VmExit>,
}

impl BusDevice for I8042Reset {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == u64::from(I8042_COMMAND_PORT - I8042_DATA_PORT)
            && data.first() == Some(&I8042_CMD_RESET)
        {
            self.exit.request(ExitReason::Reset);
        }
    }
}

/// Value the FADT tells the guest to write to its RESET_REG (`layout::ACPI_POWER_PORT`) to reset.
/// Bit 0 is reserved in the sleep control register, so a sleep request can never look like it.
pub const ACPI_RESET_VALUE: u8 = 0x01;
/// SLP_TYP of S5 (soft off), as the DSDT's `\_S5_` package gives it to the guest.
pub const ACPI_S5_SLEEP_TYPE: u8 = 5;
/// Sleep control register (ACPI 6.5, 4.8.3.7): SLP_EN starts the transition to SLP_TYP.
const ACPI_SLEEP_ENABLE: u8 = 1 << 5;
const ACPI_SLEEP_TYPE_SHIFT: u8 = 2;
const ACPI_SLEEP_TYPE_MASK: u8 = 0x7 << ACPI_SLEEP_TYPE_SHIFT;

/// The hardware-reduced ACPI sleep control and status register, which is also the reset register:
/// S5 ends the VM as a poweroff, the reset value as a reset. The status register reads as zero
/// (never awake from sleep), and the guest's write of WAK_STS to clear it is ignored.
pub struct AcpiPowerControl {
    pub exit: Arc<VmExit>,
}

impl AcpiPowerControl {
    /// What a byte written to the register asks for, if anything the VMM acts on.
    pub fn decode(value: u8) -> Option<ExitReason> {
        if value == ACPI_RESET_VALUE {
            return Some(ExitReason::Reset);
        }
        let sleep_type = (value & ACPI_SLEEP_TYPE_MASK) >> ACPI_SLEEP_TYPE_SHIFT;
        // Only S5 is offered in the DSDT; a request for another state is not acted on.
        (value & ACPI_SLEEP_ENABLE != 0 && sleep_type == ACPI_S5_SLEEP_TYPE)
            .then_some(ExitReason::Shutdown)
    }
}

impl BusDevice for AcpiPowerControl {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (0, Some(reason)) = (offset, data.first().copied().and_then(Self::decode)) {
            self.exit.request(reason);
        }
    }
}

/// Ports 0xf4 (exit status) and 0xf5 (userspace marker). See docs/guest-interface.md.
pub struct GuestControl {
    pub exit: Arc<VmExit>,
}

impl BusDevice for GuestControl {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.first()) {
            (0, Some(status)) => self.exit.request(ExitReason::GuestStatus(*status)),
            (1, Some(_)) => timing::record_userspace(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_input_waits_for_the_receive_interrupt() {
        let ready = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let console = Arc::new(Mutex::new(
            ConsoleOutput::new(Box::new(std::io::sink())).unwrap(),
        ));
        let port = Serial::with_events(
            SerialIrq(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
            SerialInputDrained(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
            SharedConsole(console),
        );
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut device = SerialDevice::new(port, ready.try_clone().unwrap(), irq);
        assert!(!device.accepts_input());
        // With DLAB set, offset 1 is the divisor latch, not IER.
        device.write(UART_LCR, &[UART_LCR_DLAB]);
        device.write(UART_IER, &[0x01]);
        assert!(!device.accepts_input());
        device.write(UART_LCR, &[0x03]);
        // The driver's probe of the register is not a start.
        device.write(UART_IER, &[UART_IER_PROBE]);
        assert!(!device.accepts_input());
        device.write(UART_IER, &[0x00]);
        device.write(UART_IER, &[0x05]);
        assert!(device.accepts_input());
        assert_eq!(ready.read().unwrap(), 1);
        device.write(UART_IER, &[0x02]);
        assert!(!device.accepts_input());
        // THRI enabled: the transmitter-empty interrupt is pending in IIR.
        assert_eq!(
            device.debug_state(),
            "IER 0x02 IIR 0x02 LSR 0x60 MCR 0x08 rx-fifo 0 input-enabled false"
        );
    }

    #[test]
    fn a_serial_interrupt_left_pending_is_raised_again() {
        let console = Arc::new(Mutex::new(
            ConsoleOutput::new(Box::new(std::io::sink())).unwrap(),
        ));
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let port = Serial::with_events(
            SerialIrq(irq.try_clone().unwrap()),
            SerialInputDrained(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
            SharedConsole(console),
        );
        let ready = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut device = SerialDevice::new(port, ready, irq.try_clone().unwrap());
        let raised = |irq: &EventFd| irq.read().unwrap_or(0);
        assert!(!device.check_lost_interrupt());
        // THRI enabled: THRE pending, one edge.
        device.write(UART_IER, &[UART_IER_THRI]);
        assert_eq!(raised(&irq), 1);
        assert!(!device.check_lost_interrupt(), "first sighting");
        // The guest reads IIR in time: no second edge.
        let mut iir = [0u8];
        device.read(UART_IIR, &mut iir);
        assert_eq!(iir[0] & 0x0f, UART_IIR_THRI);
        assert!(!device.check_lost_interrupt());
        assert_eq!(raised(&irq), 0);
        // vm-superio does not raise THRE again over a pending bit: disable THRI with the bit
        // set, then enable it again without an IIR read. Nothing reads IIR: raised again.
        device.write(0, b"x");
        device.write(UART_IER, &[0]);
        device.write(UART_IER, &[UART_IER_THRI]);
        let edges = raised(&irq);
        assert!(!device.check_lost_interrupt());
        assert!(device.check_lost_interrupt());
        assert_eq!(raised(&irq), 1, "after {edges} edge(s) from the writes");
        assert!(device.check_lost_interrupt(), "still not read");
        device.read(UART_IIR, &mut iir);
        assert!(!device.check_lost_interrupt());
    }

    #[test]
    fn guest_control_reports_status_and_marker() {
        let exit = Arc::new(VmExit::new().unwrap());
        let mut control = GuestControl { exit: exit.clone() };
        control.write(1, &[0]);
        assert!(timing::userspace().is_some());
        assert_eq!(exit.reason(), None);
        control.write(0, &[42]);
        assert_eq!(exit.reason(), Some(ExitReason::GuestStatus(42)));
    }

    #[test]
    fn i8042_reset_command_ends_the_vm() {
        let exit = Arc::new(VmExit::new().unwrap());
        let mut kbd = I8042Reset { exit: exit.clone() };
        kbd.write(0, &[I8042_CMD_RESET]);
        assert_eq!(exit.reason(), None);
        kbd.write(4, &[0x20]);
        assert_eq!(exit.reason(), None);
        kbd.write(4, &[I8042_CMD_RESET]);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
    }

    #[test]
    fn acpi_power_register_powers_off_on_s5_and_resets_on_the_reset_value() {
        let s5 = ACPI_SLEEP_ENABLE | (ACPI_S5_SLEEP_TYPE << ACPI_SLEEP_TYPE_SHIFT);
        assert_eq!(s5, 0x34);
        assert_eq!(AcpiPowerControl::decode(s5), Some(ExitReason::Shutdown));
        assert_eq!(
            AcpiPowerControl::decode(ACPI_RESET_VALUE),
            Some(ExitReason::Reset)
        );
        // Clearing WAK_STS, S5's type without SLP_EN, and other sleep states do nothing.
        assert_eq!(AcpiPowerControl::decode(0x80), None);
        assert_eq!(AcpiPowerControl::decode(0x14), None);
        assert_eq!(AcpiPowerControl::decode(0x20 | (3 << 2)), None);
        assert_eq!(AcpiPowerControl::decode(0), None);

        let exit = Arc::new(VmExit::new().unwrap());
        let mut power = AcpiPowerControl { exit: exit.clone() };
        let mut status = [0xffu8];
        power.read(0, &mut status);
        assert_eq!(status, [0]);
        power.write(0, &[0x80]);
        assert_eq!(exit.reason(), None);
        power.write(0, &[s5]);
        assert_eq!(exit.reason(), Some(ExitReason::Shutdown));

        let exit = Arc::new(VmExit::new().unwrap());
        let mut power = AcpiPowerControl { exit: exit.clone() };
        power.write(0, &[ACPI_RESET_VALUE]);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn console_flushes_whole_lines_and_signals_partial_ones() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let console = Arc::new(Mutex::new(
            ConsoleOutput::new(Box::new(Sink(seen.clone()))).unwrap(),
        ));
        let mut writer = SharedConsole(console.clone());
        writer.write_all(b"# ").unwrap();
        assert!(seen.lock().unwrap().is_empty());
        assert_eq!(console.lock().unwrap().pending_event().read().unwrap(), 1);
        console.lock().unwrap().flush_now();
        assert_eq!(seen.lock().unwrap().as_slice(), b"# ");
        writer.write_all(b"ls\n").unwrap();
        assert_eq!(seen.lock().unwrap().as_slice(), b"# ls\n");
    }
}
