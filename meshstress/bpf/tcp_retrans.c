/* tcp_retrans probe: retransmitted TCP segments per netns (of the sending socket), the
 * unit of the namespace's RetransSegs (/proc/net/snmp). Compiled after common.h.
 *
 * tracepoint tcp:tcp_retransmit_skb fires once per skb handed down successfully; the
 * skb carries tcp_skb_pcount(skb) segments (TCP_SKB_CB(skb)->tcp_gso_segs), which is what
 * the kernel added to RetransSegs for it, so that is what is counted. A retransmission
 * that failed (TCPRetransFail in /proc/net/netstat) is in RetransSegs but not here.
 * tracepoint tcp:tcp_retransmit_synack: a SYN-ACK sent again (RetransSegs +1 each).
 * Fallback kprobes (-DRETRANS_KPROBE, -DSYNACK_KPROBE): tcp_retransmit_skb(sk, skb, segs)
 * counts attempts (failed ones too) with the skb's segments before the kernel may split
 * it; tcp_rtx_synack(sk, req) counts attempts.
 */
#include <net/tcp.h>

BPF_HASH(retrans, u32, u64, 4096);

static __always_inline void count_retrans(struct sock *sk, u64 segs)
{
    if (!sk)
        return;
    u32 ns = sk_netns(sk);
    if (!watched(ns))
        return;
    u64 zero = 0;
    u64 *val = retrans.lookup_or_try_init(&ns, &zero);
    if (val)
        __sync_fetch_and_add(val, segs);
}

static __always_inline u64 skb_segs(struct sk_buff *skb)
{
    u16 segs = 0;
    struct tcp_skb_cb *cb = (struct tcp_skb_cb *)&skb->cb[0];
    bpf_probe_read_kernel(&segs, sizeof(segs), &cb->tcp_gso_segs);
    return segs;
}

#ifdef RETRANS_KPROBE
int retrans_kprobe(struct pt_regs *ctx, struct sock *sk, struct sk_buff *skb)
{
    count_retrans(sk, skb_segs(skb));
    return 0;
}
#else
TRACEPOINT_PROBE(tcp, tcp_retransmit_skb)
{
    count_retrans((struct sock *)args->skaddr, skb_segs((struct sk_buff *)args->skbaddr));
    return 0;
}
#endif

#ifdef SYNACK_KPROBE
int synack_kprobe(struct pt_regs *ctx, struct sock *sk)
{
    count_retrans(sk, 1);
    return 0;
}
#else
TRACEPOINT_PROBE(tcp, tcp_retransmit_synack)
{
    count_retrans((struct sock *)args->skaddr, 1);
    return 0;
}
#endif
