"""rollout: the batch pipeline that moves a package registry's maintainers to mandatory 2FA."""

__version__ = "0.1.0"
