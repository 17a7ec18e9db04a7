// vmm-exit: the guest side of the VMM's exit and marker ports (docs/guest-interface.md).
//
//   vmm-exit STATUS     write STATUS (0-255) as one byte to I/O port 0xf4; the VMM exits with
//                       exactly that status (QEMU's isa-debug-exit exits with (STATUS << 1) | 1).
//   vmm-exit --marker   write one byte to I/O port 0xf5: "guest userspace reached", for boot timing.
//
// Static (gcc -static) so it works before anything is mounted and needs no loader or /dev/port.
// If the VMM does not handle the port, the write is ignored and this returns 0: the caller then
// falls back to poweroff.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>

#define EXIT_PORT 0xf4
#define MARKER_PORT 0xf5

static int write_port(unsigned short port, unsigned char value)
{
	if (ioperm(port, 1, 1) != 0) {
		fprintf(stderr, "vmm-exit: ioperm(0x%x): %s\n", port, strerror(errno));
		return 1;
	}
	outb(value, port);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 2 && strcmp(argv[1], "--marker") == 0)
		return write_port(MARKER_PORT, 0);

	if (argc == 2) {
		char *end;
		long status = strtol(argv[1], &end, 10);

		if (*argv[1] != '\0' && *end == '\0' && status >= 0 && status <= 255)
			return write_port(EXIT_PORT, (unsigned char)status);
	}
	fprintf(stderr, "usage: vmm-exit STATUS(0-255) | vmm-exit --marker\n");
	return 2;
}
