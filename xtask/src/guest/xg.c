/* xg: the xdpath guest helper, for what busybox cannot do.
 * Built by `cargo xtask guest-image` with gcc -static.
 *
 *   xg channels IF [N]               show (or set to N) combined channels
 *                                     (ETHTOOL_GCHANNELS/SCHANNELS)
 *   xg stats IF [SUBSTRING]          ethtool -S: per-queue statistics
 *   xg udp-send IP PORT COUNT SIZE [FLOWS]
 *                                     COUNT datagrams of SIZE bytes, round
 *                                     robin over FLOWS sockets (distinct
 *                                     source ports, so distinct flows)
 *   xg udp-recv [-b] PORT COUNT IDLE_MS
 *                                     receive until COUNT datagrams or
 *                                     IDLE_MS without one (30 s before the
 *                                     first); checks every payload; -b:
 *                                     return once bound, receive in the
 *                                     background
 *
 * Payload of datagram number s: 4 bytes s (big endian), then byte i
 * (i >= 4) is (s + i) & 0xff.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/ethtool.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_FLOWS 256
#define MAX_SIZE 65507

static int fail(const char *what)
{
	fprintf(stderr, "xg: %s: %s\n", what, strerror(errno));
	return 1;
}

static int usage(void)
{
	fprintf(stderr, "usage: xg channels IF [N] | stats IF [SUBSTRING] | "
			"udp-send IP PORT COUNT SIZE [FLOWS] | "
			"udp-recv [-b] PORT COUNT IDLE_MS\n");
	return 2;
}

static long num(const char *s, long lo, long hi)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || *s == '\0' || *end != '\0' || v < lo || v > hi) {
		fprintf(stderr, "xg: '%s' is not a number in %ld..%ld\n", s, lo, hi);
		exit(2);
	}
	return v;
}

static int ethtool(const char *ifname, void *data)
{
	struct ifreq ifr;
	int fd, r, e;

	memset(&ifr, 0, sizeof(ifr));
	if (strlen(ifname) >= IFNAMSIZ) {
		errno = ENAMETOOLONG;
		return -1;
	}
	strcpy(ifr.ifr_name, ifname);
	ifr.ifr_data = data;
	fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0)
		return -1;
	r = ioctl(fd, SIOCETHTOOL, &ifr);
	e = errno;
	close(fd);
	errno = e;
	return r;
}

static int channels(int argc, char **argv)
{
	struct ethtool_channels ch = { .cmd = ETHTOOL_GCHANNELS };

	if (argc < 3 || argc > 4)
		return usage();
	if (ethtool(argv[2], &ch))
		return fail("ETHTOOL_GCHANNELS");
	if (argc == 4) {
		ch.combined_count = num(argv[3], 1, ch.max_combined);
		ch.cmd = ETHTOOL_SCHANNELS;
		if (ethtool(argv[2], &ch))
			return fail("ETHTOOL_SCHANNELS");
		ch.cmd = ETHTOOL_GCHANNELS;
		if (ethtool(argv[2], &ch))
			return fail("ETHTOOL_GCHANNELS");
	}
	printf("combined %u max %u\n", ch.combined_count, ch.max_combined);
	return 0;
}

static int stats(int argc, char **argv)
{
	struct ethtool_sset_info *si;
	struct ethtool_gstrings *names;
	struct ethtool_stats *vals;
	uint32_t n, i;

	if (argc < 3 || argc > 4)
		return usage();
	si = calloc(1, sizeof(*si) + sizeof(uint32_t));
	if (!si)
		return fail("calloc");
	si->cmd = ETHTOOL_GSSET_INFO;
	si->sset_mask = 1ULL << ETH_SS_STATS;
	if (ethtool(argv[2], si))
		return fail("ETHTOOL_GSSET_INFO");
	n = si->sset_mask ? si->data[0] : 0;
	names = calloc(1, sizeof(*names) + (size_t)n * ETH_GSTRING_LEN);
	vals = calloc(1, sizeof(*vals) + (size_t)n * sizeof(uint64_t));
	if (!names || !vals)
		return fail("calloc");
	names->cmd = ETHTOOL_GSTRINGS;
	names->string_set = ETH_SS_STATS;
	names->len = n;
	if (ethtool(argv[2], names))
		return fail("ETHTOOL_GSTRINGS");
	vals->cmd = ETHTOOL_GSTATS;
	vals->n_stats = n;
	if (ethtool(argv[2], vals))
		return fail("ETHTOOL_GSTATS");
	for (i = 0; i < n && i < names->len && i < vals->n_stats; i++) {
		char name[ETH_GSTRING_LEN + 1];

		memcpy(name, names->data + (size_t)i * ETH_GSTRING_LEN, ETH_GSTRING_LEN);
		name[ETH_GSTRING_LEN] = '\0';
		if (argc == 4 && !strstr(name, argv[3]))
			continue;
		printf("%s %llu\n", name, (unsigned long long)vals->data[i]);
	}
	return 0;
}

static void fill(unsigned char *buf, size_t size, uint32_t seq)
{
	size_t i;

	buf[0] = seq >> 24;
	buf[1] = seq >> 16;
	buf[2] = seq >> 8;
	buf[3] = seq;
	for (i = 4; i < size; i++)
		buf[i] = (unsigned char)(seq + i);
}

static int udp_send(int argc, char **argv)
{
	static unsigned char buf[MAX_SIZE];
	int fds[MAX_FLOWS];
	struct sockaddr_in dst = { .sin_family = AF_INET };
	long count, size, flows, i;
	unsigned long long retries = 0;

	if (argc < 6 || argc > 7)
		return usage();
	if (inet_pton(AF_INET, argv[2], &dst.sin_addr) != 1) {
		fprintf(stderr, "xg: bad IPv4 address '%s'\n", argv[2]);
		return 2;
	}
	dst.sin_port = htons(num(argv[3], 1, 65535));
	count = num(argv[4], 0, 100000000);
	size = num(argv[5], 4, MAX_SIZE);
	flows = argc == 7 ? num(argv[6], 1, MAX_FLOWS) : 1;
	for (i = 0; i < flows; i++) {
		fds[i] = socket(AF_INET, SOCK_DGRAM, 0);
		if (fds[i] < 0)
			return fail("socket");
		if (connect(fds[i], (struct sockaddr *)&dst, sizeof(dst)))
			return fail("connect");
	}
	for (i = 0; i < count; i++) {
		fill(buf, size, i);
		while (send(fds[i % flows], buf, size, 0) < 0) {
			if (errno != ENOBUFS && errno != EAGAIN && errno != EINTR)
				return fail("send");
			retries++;
			usleep(1000);
		}
	}
	printf("sent %ld bytes %lld retries %llu\n", count, (long long)count * size, retries);
	return 0;
}

static int udp_recv(int argc, char **argv)
{
	static unsigned char buf[MAX_SIZE + 1], want[MAX_SIZE + 1];
	struct sockaddr_in addr = { .sin_family = AF_INET };
	int background = 0, fd, rcvbuf = 8 << 20;
	long count, idle, got = 0, bad = 0;
	long long bytes = 0;
	uint32_t max_seq = 0;

	if (argc > 2 && !strcmp(argv[2], "-b")) {
		background = 1;
		argv++;
		argc--;
	}
	if (argc != 5)
		return usage();
	addr.sin_port = htons(num(argv[2], 1, 65535));
	count = num(argv[3], 1, 100000000);
	idle = num(argv[4], 1, 3600000);
	fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0)
		return fail("socket");
	/* Root may exceed rmem_max: a TCG guest reads slowly. */
	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf)))
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
	if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)))
		return fail("bind");
	if (background) {
		pid_t pid;

		fflush(stdout);
		pid = fork();
		if (pid < 0)
			return fail("fork");
		if (pid > 0)
			return 0;
		setsid();
	}
	while (got < count) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int r = poll(&p, 1, got ? idle : 30000);
		ssize_t n;
		uint32_t seq;

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return fail("poll");
		if (r == 0)
			break;
		n = recv(fd, buf, sizeof(buf), 0);
		if (n < 0)
			return fail("recv");
		got++;
		bytes += n;
		if (n < 4) {
			bad++;
			continue;
		}
		seq = (uint32_t)buf[0] << 24 | buf[1] << 16 | buf[2] << 8 | buf[3];
		fill(want, n, seq);
		if (memcmp(buf, want, n))
			bad++;
		if (seq > max_seq)
			max_seq = seq;
	}
	printf("received %ld bytes %lld bad %ld maxseq %u\n", got, bytes, bad, max_seq);
	fflush(stdout);
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc < 2)
		return usage();
	if (!strcmp(argv[1], "channels"))
		return channels(argc, argv);
	if (!strcmp(argv[1], "stats"))
		return stats(argc, argv);
	if (!strcmp(argv[1], "udp-send"))
		return udp_send(argc, argv);
	if (!strcmp(argv[1], "udp-recv"))
		return udp_recv(argc, argv);
	return usage();
}
