"""Differential test of TNA against Linux itself.

A *case* is one seeded random configuration of a lab (a router, an ECMP
router or a routed bridge: routes, rules, neighbours, sysctls, iptables,
bridge port states and flags) and a list of crafted frames.  The runner
sends the frames once through plain Linux and once through `tna run` per
hook, captures every frame every host receives, snapshots the state an admin
sees, and the comparator reports each difference.

  gen.py      configurations and frames from a seed (KNOWN_OPEN: the switch)
  run.py      build the lab, run each mode, capture and snapshot
  compare.py  normalise what the kernel itself varies, and compare
  __main__.py the campaign command: python -m netns_labs.difftest --seed S --cases N
"""
