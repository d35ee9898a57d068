"""The sealed edge of the workers: only Cloudflare reaches them, over strict TLS.

Owns: the cluster's Hetzner Cloud Firewall and Cloudflare's published IP ranges it
admits (firewall*.py, cloudflare_ips*.py), and the workers' origin TLS and authenticated
origin pulls (tls*.py, origin*.py).
May import: the foundation modules, control.db, control.dns (the Cloudflare client and
its errors) and control.capacity (the Hetzner client's errors and rate budget).
"""
