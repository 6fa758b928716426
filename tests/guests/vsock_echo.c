/*
 * vsock_echo: a polled virtio-vsock driver (virtio-mmio v2, split queues, no interrupts).
 *
 *  - finds the vsock device (DeviceID 19) among the `virtio_mmio.device=` entries, sets it up
 *    and reads its guest CID from the configuration space;
 *  - listens on `capsule.vsock_port=<port>` (default 1234) and echoes every byte it receives,
 *    with credit-based flow control both ways;
 *  - with `capsule.vsock_connect=<port>`, connects to (CID 2, port) and writes the line
 *    "hello from vsock guest <cid>\n", then closes;
 *  - serves `capsule.vsock_conns=<n>` echo connections (default 1; 0 = forever), then ends.
 *
 * Reports: ok vsock-device, ok vsock-connect, ok vsock-echo (one per finished connection, with
 * the byte count), not ok ... on failures.
 */
#include "runtime.h"

#define MMIO_MAGIC 0x000
#define MMIO_VERSION 0x004
#define MMIO_DEVICE_ID 0x008
#define MMIO_DEVICE_FEATURES 0x010
#define MMIO_DEVICE_FEATURES_SEL 0x014
#define MMIO_DRIVER_FEATURES 0x020
#define MMIO_DRIVER_FEATURES_SEL 0x024
#define MMIO_QUEUE_SEL 0x030
#define MMIO_QUEUE_NUM_MAX 0x034
#define MMIO_QUEUE_NUM 0x038
#define MMIO_QUEUE_READY 0x044
#define MMIO_QUEUE_NOTIFY 0x050
#define MMIO_STATUS 0x070
#define MMIO_QUEUE_DESC 0x080
#define MMIO_QUEUE_AVAIL 0x090
#define MMIO_QUEUE_USED 0x0a0
#define MMIO_CONFIG 0x100

#define ST_ACK 1
#define ST_DRIVER 2
#define ST_DRIVER_OK 4
#define ST_FEATURES_OK 8

#define DESC_F_NEXT 1
#define DESC_F_WRITE 2

#define QSIZE 16
#define RXQ 0
#define TXQ 1
#define EVQ 2

#define OP_REQUEST 1
#define OP_RESPONSE 2
#define OP_RST 3
#define OP_SHUTDOWN 4
#define OP_RW 5
#define OP_CREDIT_UPDATE 6
#define OP_CREDIT_REQUEST 7
#define TYPE_STREAM 1
#define HOST_CID 2

#define BUF_ALLOC 65536u /* what we advertise: the echo buffer */
#define RX_DATA 4096u
#define MAX_CONNS 4

struct hdr {
    u64 src_cid, dst_cid;
    u32 src_port, dst_port, len;
    u16 type, op;
    u32 flags, buf_alloc, fwd_cnt;
} __attribute__((packed));

struct desc {
    u64 addr;
    u32 len;
    u16 flags, next;
};

struct vq {
    struct desc desc[QSIZE] __attribute__((aligned(16)));
    struct {
        u16 flags, idx, ring[QSIZE], event;
    } avail __attribute__((aligned(2)));
    struct {
        u16 flags, idx;
        struct {
            u32 id, len;
        } ring[QSIZE];
        u16 event;
    } used __attribute__((aligned(4)));
    u16 last_used;
};

static struct vq queues[3] __attribute__((aligned(4096)));
static u8 rx_bufs[QSIZE][sizeof(struct hdr) + RX_DATA] __attribute__((aligned(16)));
static u8 tx_buf[sizeof(struct hdr) + RX_DATA] __attribute__((aligned(16)));
static u8 ev_bufs[QSIZE][8];

static u64 base;
static u64 cid;

struct conn {
    int used;
    int guest_initiated;
    int established;
    u32 local, peer; /* our port, host port */
    u32 peer_buf_alloc, peer_fwd_cnt, tx_cnt;
    u32 fwd_cnt; /* bytes we consumed (echoed) */
    u32 received;
    int peer_done; /* host sent SHUTDOWN(SEND) */
    /* echo ring: bytes received, not yet echoed (bounded by BUF_ALLOC through our credit) */
    u8 ring[BUF_ALLOC];
    u32 head, count;
};
static struct conn conns[MAX_CONNS];

static inline u32 rd(u32 off) { return mmio_read32(base + off); }
static inline void wr(u32 off, u32 v) { mmio_write32(base + off, v); }

static int parse_dev(const char *s, size_t n, u64 *addr)
{
    size_t at = 0, colon;
    u64 size;
    while (at < n && s[at] != '@')
        at++;
    colon = at;
    while (colon < n && s[colon] != ':')
        colon++;
    return at < n && colon < n && parse_size(s, at, &size) &&
           parse_size(s + at + 1, colon - at - 1, addr) && size >= 0x200 &&
           phys_range_mapped(*addr, size);
}

static int find_device(void)
{
    const char *pos = NULL, *v;
    size_t len;
    while (cmdline_next(&pos, "virtio_mmio.device", &v, &len)) {
        u64 addr;
        if (!parse_dev(v, len, &addr))
            continue;
        if (mmio_read32(addr + MMIO_MAGIC) == 0x74726976u &&
            mmio_read32(addr + MMIO_VERSION) == 2 && mmio_read32(addr + MMIO_DEVICE_ID) == 19) {
            base = addr;
            return 1;
        }
    }
    return 0;
}

static void set_addr(u32 off, const void *p)
{
    u64 a = (u64)(uintptr_t)p;
    wr(off, (u32)a);
    wr(off + 4, (u32)(a >> 32));
}

static int setup_device(void)
{
    wr(MMIO_STATUS, 0);
    wr(MMIO_STATUS, ST_ACK);
    wr(MMIO_STATUS, ST_ACK | ST_DRIVER);
    wr(MMIO_DEVICE_FEATURES_SEL, 1);
    if (!(rd(MMIO_DEVICE_FEATURES) & 1)) {
        report_fail("vsock-device", "device does not offer VIRTIO_F_VERSION_1");
        return 0;
    }
    wr(MMIO_DRIVER_FEATURES_SEL, 0);
    wr(MMIO_DRIVER_FEATURES, 0);
    wr(MMIO_DRIVER_FEATURES_SEL, 1);
    wr(MMIO_DRIVER_FEATURES, 1);
    wr(MMIO_STATUS, ST_ACK | ST_DRIVER | ST_FEATURES_OK);
    if (!(rd(MMIO_STATUS) & ST_FEATURES_OK)) {
        report_fail("vsock-device", "FEATURES_OK not accepted");
        return 0;
    }
    for (u32 q = 0; q < 3; q++) {
        wr(MMIO_QUEUE_SEL, q);
        if (rd(MMIO_QUEUE_NUM_MAX) < QSIZE) {
            report_fail("vsock-device", "queue %u max size %u < %u", q, rd(MMIO_QUEUE_NUM_MAX),
                        QSIZE);
            return 0;
        }
        wr(MMIO_QUEUE_NUM, QSIZE);
        set_addr(MMIO_QUEUE_DESC, queues[q].desc);
        set_addr(MMIO_QUEUE_AVAIL, &queues[q].avail);
        set_addr(MMIO_QUEUE_USED, &queues[q].used);
        wr(MMIO_QUEUE_READY, 1);
    }
    wr(MMIO_STATUS, ST_ACK | ST_DRIVER | ST_FEATURES_OK | ST_DRIVER_OK);
    cid = (u64)mmio_read32(base + MMIO_CONFIG) | ((u64)mmio_read32(base + MMIO_CONFIG + 4) << 32);
    return 1;
}

/* Descriptor i of a queue always describes buffer i; chains are one descriptor long. */
static void post(u32 q, u16 i, void *buf, u32 len, u16 flags)
{
    struct vq *vq = &queues[q];
    vq->desc[i].addr = (u64)(uintptr_t)buf;
    vq->desc[i].len = len;
    vq->desc[i].flags = flags;
    vq->desc[i].next = 0;
    vq->avail.ring[vq->avail.idx % QSIZE] = i;
    barrier();
    vq->avail.idx++;
    barrier();
}

static void kick(u32 q) { wr(MMIO_QUEUE_NOTIFY, q); }

static u16 used_idx(u32 q) { return *(volatile u16 *)&queues[q].used.idx; }

/* Sends one packet (header and data in one descriptor) and waits until the device took it. */
static void send_raw(u32 local, u32 peer, u32 fwd_cnt, u16 op, u32 flags, const u8 *data,
                     u32 len)
{
    struct hdr *h = (struct hdr *)tx_buf;
    h->src_cid = cid;
    h->dst_cid = HOST_CID;
    h->src_port = local;
    h->dst_port = peer;
    h->len = len;
    h->type = TYPE_STREAM;
    h->op = op;
    h->flags = flags;
    h->buf_alloc = BUF_ALLOC;
    h->fwd_cnt = fwd_cnt;
    if (len)
        memcpy(tx_buf + sizeof(struct hdr), data, len);
    u16 want = queues[TXQ].last_used + 1;
    post(TXQ, 0, tx_buf, sizeof(struct hdr) + len, 0);
    kick(TXQ);
    while ((u16)(used_idx(TXQ) - want) >= 0x8000)
        __asm__ volatile("pause");
    queues[TXQ].last_used = want;
}

static void send(struct conn *c, u16 op, u32 flags, const u8 *data, u32 len)
{
    c->tx_cnt += len;
    send_raw(c->local, c->peer, c->fwd_cnt, op, flags, data, len);
}

static struct conn *find(u32 local, u32 peer)
{
    for (int i = 0; i < MAX_CONNS; i++)
        if (conns[i].used && conns[i].local == local && conns[i].peer == peer)
            return &conns[i];
    return NULL;
}

static struct conn *alloc_conn(u32 local, u32 peer)
{
    for (int i = 0; i < MAX_CONNS; i++)
        if (!conns[i].used) {
            struct conn *c = &conns[i];
            c->used = 1;
            c->guest_initiated = c->established = c->peer_done = 0;
            c->local = local;
            c->peer = peer;
            c->peer_buf_alloc = c->peer_fwd_cnt = c->tx_cnt = c->fwd_cnt = 0;
            c->received = c->head = c->count = 0;
            return c;
        }
    return NULL;
}

/* A reply to a packet that has no connection: RST from (local, peer). */
static void send_rst(u32 local, u32 peer) { send_raw(local, peer, 0, OP_RST, 0, NULL, 0); }

static u32 credit(struct conn *c) { return c->peer_buf_alloc - (c->tx_cnt - c->peer_fwd_cnt); }

/* Echoes what the credit allows. */
static void flush(struct conn *c)
{
    static u8 chunk[RX_DATA];
    while (c->count) {
        u32 n = c->count, cr = credit(c), tail = BUF_ALLOC - c->head;
        if (n > RX_DATA)
            n = RX_DATA;
        if (n > tail)
            n = tail;
        if (cr == 0) {
            send(c, OP_CREDIT_REQUEST, 0, NULL, 0);
            return;
        }
        if (n > cr)
            n = cr;
        memcpy(chunk, c->ring + c->head, n);
        c->head = (c->head + n) % BUF_ALLOC;
        c->count -= n;
        c->fwd_cnt += n; /* the space is free again; this packet tells the host */
        send(c, OP_RW, 0, chunk, n);
    }
}

static u32 listen_port = 1234, connect_port, conns_wanted = 1, conns_done;
static int connect_done;

static void close_conn(struct conn *c, const char *why)
{
    if (!c->guest_initiated) {
        report(c->received == c->fwd_cnt, "vsock-echo", "%u bytes echoed on port %u (%s)",
               c->fwd_cnt, c->local, why);
        conns_done++;
    }
    c->used = 0;
}

static void handle(struct hdr *h, const u8 *data)
{
    if (h->dst_cid != cid || h->src_cid != HOST_CID || h->type != TYPE_STREAM) {
        report_fail("vsock-packet", "unexpected header cid %lu->%lu type %u", h->src_cid,
                    h->dst_cid, h->type);
        return;
    }
    struct conn *c = find(h->dst_port, h->src_port);
    if (c) {
        c->peer_buf_alloc = h->buf_alloc;
        c->peer_fwd_cnt = h->fwd_cnt;
    }
    switch (h->op) {
    case OP_REQUEST:
        if (c || h->dst_port != listen_port || !(c = alloc_conn(h->dst_port, h->src_port))) {
            send_rst(h->dst_port, h->src_port);
            return;
        }
        c->peer_buf_alloc = h->buf_alloc;
        c->peer_fwd_cnt = h->fwd_cnt;
        c->established = 1;
        send(c, OP_RESPONSE, 0, NULL, 0);
        return;
    case OP_RESPONSE:
        if (c && c->guest_initiated && !c->established) {
            char line[64];
            size_t n = snprint(line, sizeof(line), "hello from vsock guest %lu\n", cid);
            c->established = 1;
            send(c, OP_RW, 0, (const u8 *)line, n);
            send(c, OP_SHUTDOWN, 3, NULL, 0);
            report_ok("vsock-connect", "wrote %u bytes to host port %u", (unsigned)n, c->peer);
        }
        return;
    case OP_RST:
        if (c && c->guest_initiated) {
            if (!c->established)
                report_fail("vsock-connect", "host port %u refused the connection", c->peer);
            connect_done = 1;
            c->used = 0;
        } else if (c) {
            close_conn(c, "reset by host");
        }
        return;
    case OP_RW:
        if (!c || !c->established || h->len > BUF_ALLOC - c->count) {
            report_fail("vsock-rw", "unexpected data (%u bytes)", h->len);
            if (c)
                c->used = 0;
            send_rst(h->dst_port, h->src_port);
            return;
        }
        for (u32 i = 0; i < h->len;) {
            u32 at = (c->head + c->count) % BUF_ALLOC, n = h->len - i;
            if (n > BUF_ALLOC - at)
                n = BUF_ALLOC - at;
            memcpy(c->ring + at, data + i, n);
            c->count += n;
            i += n;
        }
        c->received += h->len;
        flush(c);
        return;
    case OP_SHUTDOWN:
        if (c) {
            flush(c);
            if (h->flags & 2)
                c->peer_done = 1;
            if (c->peer_done && c->count == 0)
                send(c, OP_SHUTDOWN, 3, NULL, 0); /* we close too; the device answers RST */
        }
        return;
    case OP_CREDIT_UPDATE:
        if (c)
            flush(c);
        return;
    case OP_CREDIT_REQUEST:
        if (c)
            send(c, OP_CREDIT_UPDATE, 0, NULL, 0);
        return;
    default:
        report_fail("vsock-packet", "unknown op %u", h->op);
    }
}

void guest_main(void)
{
    u64 v;
    if (cmdline_u64("capsule.vsock_port", &v))
        listen_port = (u32)v;
    if (cmdline_u64("capsule.vsock_connect", &v))
        connect_port = (u32)v;
    if (cmdline_u64("capsule.vsock_conns", &v))
        conns_wanted = (u32)v;

    if (!find_device()) {
        report_fail("vsock-device", "no virtio-vsock device on the command line");
        return;
    }
    if (!setup_device())
        return;
    report_ok("vsock-device", "at 0x%lx, guest cid %lu", base, cid);

    for (u16 i = 0; i < QSIZE; i++) {
        post(RXQ, i, rx_bufs[i], sizeof(rx_bufs[i]), DESC_F_WRITE);
        post(EVQ, i, ev_bufs[i], sizeof(ev_bufs[i]), DESC_F_WRITE);
    }
    kick(RXQ);
    kick(EVQ);
    info("vsock-listening", "port %u", listen_port);

    if (connect_port) {
        struct conn *c = alloc_conn(49152, connect_port);
        c->guest_initiated = 1;
        send(c, OP_REQUEST, 0, NULL, 0);
    } else {
        connect_done = 1;
    }

    while (!(connect_done && conns_wanted && conns_done >= conns_wanted)) {
        struct vq *rx = &queues[RXQ];
        if (used_idx(RXQ) == rx->last_used) {
            if (used_idx(EVQ) != queues[EVQ].last_used) {
                info("vsock-event", "transport reset");
                queues[EVQ].last_used++;
            }
            __asm__ volatile("pause");
            continue;
        }
        barrier();
        u16 slot = rx->last_used % QSIZE;
        u32 id = rx->used.ring[slot].id, len = rx->used.ring[slot].len;
        rx->last_used++;
        if (id < QSIZE && len >= sizeof(struct hdr)) {
            struct hdr h;
            memcpy(&h, rx_bufs[id], sizeof(h));
            if (h.len <= len - sizeof(struct hdr))
                handle(&h, rx_bufs[id] + sizeof(struct hdr));
            else
                report_fail("vsock-packet", "len %u beyond the %u bytes used", h.len, len);
        }
        if (id < QSIZE) {
            post(RXQ, (u16)id, rx_bufs[id], sizeof(rx_bufs[id]), DESC_F_WRITE);
            kick(RXQ);
        }
    }
}
