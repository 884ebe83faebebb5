/* tcp_retrans probe: TCP retransmissions per netns (of the sending socket).
 * Compiled after common.h.
 *
 * tracepoint tcp:tcp_retransmit_skb (fires once per retransmitted skb, after it was
 * handed down successfully; one skb may carry several segments, so this is <= the
 * namespace's RetransSegs); fallback kprobe on tcp_retransmit_skb(sk, skb, segs)
 * (-DRETRANS_KPROBE; counts attempts, also failed ones).
 */
BPF_HASH(retrans, u32, u64, 4096);

static __always_inline void count_retrans(struct sock *sk)
{
    if (!sk)
        return;
    u32 ns = sk_netns(sk);
    if (!watched(ns))
        return;
    u64 zero = 0;
    u64 *val = retrans.lookup_or_try_init(&ns, &zero);
    if (val)
        __sync_fetch_and_add(val, 1);
}

#ifdef RETRANS_KPROBE
int retrans_kprobe(struct pt_regs *ctx, struct sock *sk)
{
    count_retrans(sk);
    return 0;
}
#else
TRACEPOINT_PROBE(tcp, tcp_retransmit_skb)
{
    count_retrans((struct sock *)args->skaddr);
    return 0;
}
#endif
