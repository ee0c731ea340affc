/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * packet_gen.c - the lab's traffic generator where the kernel refuses
 * live-frame test runs (BPF_F_TEST_XDP_LIVE_FRAMES): copies of one frame
 * sent out of a device through an AF_PACKET socket with sendmmsg(), the
 * qdisc bypassed.  Each frame goes through dev_direct_xmit(), so a veth
 * hands it to its peer at once and the peer's receive path (XDP or TC,
 * forwarding, the sink) runs in the softirq that ends the send, on this
 * CPU: the generator is self-clocked, as the live frames are, but it
 * costs an skb and a copy per frame that the live frames do not.
 *
 *   int pg_open(const char *dev)            -> socket fd, or -errno
 *   long pg_send(int fd, frame, len, count) -> frames sent, or -errno
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define PG_BATCH 64

int pg_open(const char *dev)
{
	struct sockaddr_ll sll = { .sll_family = AF_PACKET };
	int one = 1;
	/* protocol 0: this socket receives nothing */
	int fd = socket(AF_PACKET, SOCK_RAW, 0);

	if (fd < 0)
		return -errno;
	sll.sll_ifindex = (int)if_nametoindex(dev);
	if (!sll.sll_ifindex ||
	    setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one)) ||
	    bind(fd, (struct sockaddr *)&sll, sizeof(sll))) {
		int err = sll.sll_ifindex ? errno : ENODEV;

		close(fd);
		return -err;
	}
	return fd;
}

long pg_send(int fd, const void *frame, unsigned int len, long count)
{
	struct iovec iov = { .iov_base = (void *)frame, .iov_len = len };
	struct mmsghdr msgs[PG_BATCH];
	long sent = 0;

	memset(msgs, 0, sizeof(msgs));
	for (int i = 0; i < PG_BATCH; i++) {
		msgs[i].msg_hdr.msg_iov = &iov;
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	while (sent < count) {
		unsigned int n = count - sent < PG_BATCH ? (unsigned int)(count - sent) : PG_BATCH;
		int done = sendmmsg(fd, msgs, n, 0);

		if (done < 0) {
			if (errno == ENOBUFS || errno == EAGAIN || errno == EINTR)
				continue;  /* the device was busy: send again */
			return -errno;
		}
		sent += done;
	}
	return sent;
}
