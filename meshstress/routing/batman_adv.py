"""batman-adv placeholder (filled in below)."""

from meshstress.routing.base import Backend


class BatmanAdvBackend(Backend):
    name = "batman-adv"
    l3 = False
    mtu = 1560
