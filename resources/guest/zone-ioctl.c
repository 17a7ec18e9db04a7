/* zone-ioctl DEVICE: prints what the zoned block ioctls say, for zoned-check to compare with
 * sysfs: "zone_sectors N" (BLKGETZONESZ) and "nr_zones N" (BLKGETNRZONES). Static, tiny. */
#include <fcntl.h>
#include <linux/blkzoned.h>
#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <sys/ioctl.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	unsigned int zone_sectors = 0, nr_zones = 0;
	int fd;

	if (argc != 2) {
		fprintf(stderr, "usage: zone-ioctl DEVICE\n");
		return 2;
	}
	fd = open(argv[1], O_RDONLY);
	if (fd < 0) {
		fprintf(stderr, "zone-ioctl: cannot open %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	if (ioctl(fd, BLKGETZONESZ, &zone_sectors) || ioctl(fd, BLKGETNRZONES, &nr_zones)) {
		fprintf(stderr, "zone-ioctl: %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	printf("zone_sectors %u\nnr_zones %u\n", zone_sectors, nr_zones);
	close(fd);
	return 0;
}
