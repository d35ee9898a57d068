"""DNS for users: `<subdomain>.<BASE_DOMAIN>` points at the user's worker. The provider
interface (no-op locally, Cloudflare in production) and the reconciliation loop.

Owns: the DNS records carrying our marker, at the provider.
May import: the foundation modules and control.db.
"""
