"""libgit2's questions answered: which key or token to offer, and whether a host key is known."""

from __future__ import annotations

import pygit2
from pygit2.enums import CredentialType

from ..config import GitAuth


class Credentials(pygit2.RemoteCallbacks):
    """Deploy key or token for fetch and clone, and a host key that must be known.

    pygit2's default accepts any SSH host key; here an unknown or changed host
    key fails (libgit2 checks ``known_hosts`` and tells us in ``valid``).
    """

    def __init__(self, auth: GitAuth | None) -> None:
        super().__init__()
        self.auth = auth or GitAuth()
        self.tried: list[str] = []

    def credentials(self, url: str, username_from_url: str | None, allowed_types: CredentialType):
        a = self.auth
        if allowed_types & CredentialType.SSH_KEY and a.ssh_key and "ssh" not in self.tried:
            self.tried.append("ssh")
            pub = a.ssh_key.with_name(a.ssh_key.name + ".pub")
            return pygit2.Keypair(username_from_url or "git", str(pub) if pub.exists() else None,
                                  str(a.ssh_key), a.ssh_passphrase)
        if allowed_types & CredentialType.USERPASS_PLAINTEXT and a.token and "token" not in self.tried:
            self.tried.append("token")
            return pygit2.UserPass(username_from_url or a.username, a.token)
        if allowed_types & CredentialType.SSH_KEY and not a.ssh_key and "agent" not in self.tried:
            self.tried.append("agent")  # no key configured: the user's ssh-agent, as git would
            return pygit2.KeypairFromAgent(username_from_url or "git")
        raise pygit2.GitError("no (more) credentials to try")

    def certificate_check(self, certificate: None, valid: bool, host: bytes) -> bool:
        return bool(valid)

    def explain(self, exc: Exception, url: str) -> str:
        a, text = self.auth, str(exc)
        if isinstance(exc, pygit2.CertificateError) or "hostkey" in text or "certificate" in text.lower():
            where = a.known_hosts or "~/.ssh/known_hosts"
            return (f"the host key of {url} is unknown or changed ({text}); add it to {where} "
                    f"(ssh-keyscan, then check the fingerprint) and set [repo.auth] known_hosts")
        if isinstance(exc, pygit2.AuthError) or "authentication" in text or "credentials" in text:
            if "ssh" in self.tried:
                return (f"authentication with the SSH key {a.ssh_key} was rejected by {url} ({text}); add its "
                        f"public half as a deploy key with read access, or fix [repo.auth] ssh_key")
            if "token" in self.tried:
                return (f"authentication with the token from {a.token_from} (user {a.username}) was rejected by "
                        f"{url} ({text}); check the token is valid and can read the repository")
            return (f"{url} asks for credentials and none are configured ({text}); set [repo.auth] ssh_key "
                    f"or token_env (or token_file)")
        return text
