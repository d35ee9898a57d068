"""Leadership among replicas sharing one database (issue 16): exactly one runs the
singletons (the autoscaler and its backup step, the liveness sweeps, the DNS and firewall
rounds, the Stripe prune), held by a lease row with a fencing token.

Owns: the `leases` table (lease.py), the pure decision to acquire, renew or wait
(decide.py), the fence that fails a deposed leader's writes (fencing.py) and the
`Leadership` that holds the lease and runs the singletons only while it does
(leadership.py).
May import: control's foundation modules (errors, clock, settings) and control.db. It
knows nothing of what the singletons do: the app hands them over.
"""
