/* drops probe: freed-not-consumed skbs per (netns, drop reason).
 * Compiled after common.h.
 *
 * tracepoint skb:kfree_skb (its `reason` is enum skb_drop_reason since 5.17; without
 * the field, -DDROP_NO_REASON counts everything under reason 0); fallback kprobe on
 * kfree_skb_reason(skb, reason) (-DDROP_KPROBE).
 * The netns is the skb's device's; without a device (socket-level drops), the socket's.
 */
struct drop_key {
    u32 netns;
    u32 reason;
};

BPF_HASH(drops, struct drop_key, u64, 4096);

static __always_inline void count_drop(struct sk_buff *skb, u32 reason)
{
    u32 ns = 0;
    struct net_device *dev = skb_dev(skb);
    if (dev) {
        ns = dev_netns(dev);
    } else {
        struct sock *sk = NULL;
        bpf_probe_read_kernel(&sk, sizeof(sk), &skb->sk);
        if (sk)
            ns = sk_netns(sk);
    }
    if (!watched(ns))
        return;
    struct drop_key key = {.netns = ns, .reason = reason};
    u64 zero = 0;
    u64 *val = drops.lookup_or_try_init(&key, &zero);
    if (val)
        __sync_fetch_and_add(val, 1);
}

#ifdef DROP_KPROBE
int drop_kprobe(struct pt_regs *ctx, struct sk_buff *skb, u32 reason)
{
    count_drop(skb, reason);
    return 0;
}
#else
TRACEPOINT_PROBE(skb, kfree_skb)
{
#ifdef DROP_NO_REASON
    count_drop((struct sk_buff *)args->skbaddr, 0);
#else
    count_drop((struct sk_buff *)args->skbaddr, args->reason);
#endif
    return 0;
}
#endif
