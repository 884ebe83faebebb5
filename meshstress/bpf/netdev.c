/* traffic and batman probes: packets and bytes per (netns, ifindex) and direction;
 * frames of ethertype 0x4305 (batman-adv) also per batman-adv packet type.
 * Compiled after common.h with -DPROBE_TRAFFIC and/or -DPROBE_BATMAN.
 *
 * tx: tracepoint net:net_dev_start_xmit (the skb handed to the driver, after the qdisc:
 *     what a netem qdisc dropped is not counted); fallback kprobe on dev_hard_start_xmit
 *     (-DTX_KPROBE; counts the first skb of a list only).
 * rx: tracepoint net:netif_receive_skb (in __netif_receive_skb_core, before any protocol
 *     handler); fallback kprobe on __netif_receive_skb_core or its .constprop.0 clone
 *     (-DRX_KPROBE; both the backlog and the list/GRO paths pass there).
 * Bytes are skb->len: with the Ethernet header on tx, without it on rx.
 */
struct if_key {
    u32 netns;
    u32 ifindex;
};

struct if_val {
    u64 tx_packets;
    u64 tx_bytes;
    u64 rx_packets;
    u64 rx_bytes;
};

struct bat_key {
    u32 netns;
    u32 ifindex;
    u32 ptype; /* batman-adv packet_type, the first byte of its header */
    u32 rx;
};

struct bat_val {
    u64 packets;
    u64 bytes;
};

#ifdef PROBE_TRAFFIC
BPF_HASH(traffic, struct if_key, struct if_val, 16384);
#endif
#ifdef PROBE_BATMAN
BPF_HASH(batman, struct bat_key, struct bat_val, 16384);
#endif

static __always_inline void count_skb(struct sk_buff *skb, int rx)
{
    struct net_device *dev = skb_dev(skb);
    if (!dev)
        return;
    u32 ns = dev_netns(dev);
    if (!watched(ns))
        return;
    int ifindex = 0;
    bpf_probe_read_kernel(&ifindex, sizeof(ifindex), &dev->ifindex);
    u32 len = 0;
    bpf_probe_read_kernel(&len, sizeof(len), &skb->len);
#ifdef PROBE_TRAFFIC
    struct if_key key = {.netns = ns, .ifindex = ifindex};
    struct if_val zero = {};
    struct if_val *val = traffic.lookup_or_try_init(&key, &zero);
    if (val) {
        if (rx) {
            __sync_fetch_and_add(&val->rx_packets, 1);
            __sync_fetch_and_add(&val->rx_bytes, len);
        } else {
            __sync_fetch_and_add(&val->tx_packets, 1);
            __sync_fetch_and_add(&val->tx_bytes, len);
        }
    }
#endif
#ifdef PROBE_BATMAN
    u16 proto = 0;
    bpf_probe_read_kernel(&proto, sizeof(proto), &skb->protocol);
    if (proto != htons(0x4305))
        return;
    unsigned char *data = NULL;
    bpf_probe_read_kernel(&data, sizeof(data), &skb->data);
    u8 ptype = 0xff;
    /* tx: skb->data is the Ethernet header; rx: eth_type_trans() pulled it already */
    bpf_probe_read_kernel(&ptype, sizeof(ptype), data + (rx ? 0 : ETH_HLEN));
    struct bat_key bkey = {.netns = ns, .ifindex = ifindex, .ptype = ptype, .rx = rx};
    struct bat_val bzero = {};
    struct bat_val *bval = batman.lookup_or_try_init(&bkey, &bzero);
    if (bval) {
        __sync_fetch_and_add(&bval->packets, 1);
        __sync_fetch_and_add(&bval->bytes, len);
    }
#endif
}

#ifdef TX_KPROBE
int tx_kprobe(struct pt_regs *ctx, struct sk_buff *first)
{
    count_skb(first, 0);
    return 0;
}
#else
TRACEPOINT_PROBE(net, net_dev_start_xmit)
{
    count_skb((struct sk_buff *)args->skbaddr, 0);
    return 0;
}
#endif

#ifdef RX_KPROBE
/* __netif_receive_skb_core(struct sk_buff **pskb, bool pfmemalloc, ...) since 5.4;
 * a compiler clone (.constprop.0) keeps pskb as its first argument */
int rx_kprobe(struct pt_regs *ctx, struct sk_buff **pskb)
{
    struct sk_buff *skb = NULL;
    bpf_probe_read_kernel(&skb, sizeof(skb), pskb);
    if (skb)
        count_skb(skb, 1);
    return 0;
}
#else
TRACEPOINT_PROBE(net, netif_receive_skb)
{
    count_skb((struct sk_buff *)args->skbaddr, 1);
    return 0;
}
#endif
