/* Shared by every meshstress probe; meshstress/probes.py compiles this file first,
 * then the selected probe files, as ONE BPF program (one compile per run).
 *
 * Events are attributed to a node by network namespace: the device's (or, without a
 * device, the socket's) netns inode, plus the device's ifindex. Only namespaces that
 * userspace put into `watched_ns` (the run's nodes) are counted; the rest of the host's
 * traffic costs one hash lookup per event and is ignored.
 */
#include <uapi/linux/ptrace.h>
#include <linux/skbuff.h>
#include <linux/netdevice.h>
#include <net/sock.h>
#include <net/net_namespace.h>

BPF_HASH(watched_ns, u32, u8, 4096);

static __always_inline u32 net_inum(struct net *net)
{
    u32 inum = 0;
    if (net)
        bpf_probe_read_kernel(&inum, sizeof(inum), &net->ns.inum);
    return inum;
}

static __always_inline u32 dev_netns(struct net_device *dev)
{
    struct net *net = NULL;
    bpf_probe_read_kernel(&net, sizeof(net), &dev->nd_net.net);
    return net_inum(net);
}

static __always_inline u32 sk_netns(struct sock *sk)
{
    struct net *net = NULL;
    bpf_probe_read_kernel(&net, sizeof(net), &sk->__sk_common.skc_net.net);
    return net_inum(net);
}

static __always_inline struct net_device *skb_dev(struct sk_buff *skb)
{
    struct net_device *dev = NULL;
    bpf_probe_read_kernel(&dev, sizeof(dev), &skb->dev);
    return dev;
}

static __always_inline int watched(u32 inum)
{
    return inum != 0 && watched_ns.lookup(&inum) != NULL;
}
