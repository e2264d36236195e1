"""CocoonFs format v1: open an image with its key, authenticate all of it, list and read files.

Spec: `cocoonfs-format.md`, sections "Opening the filesystem (informative)", "Encryption entity
formats", "Allocation bitmap", "Authentication tree" (all subsections), "Inode index",
"Inode extents lists", "Regular file encryption", "Filesystem update counter" and, for the
regions the authentication skips, "Journal log encryption" and "Storage in a formatted
filesystem" (auxiliary metadata).

This is the read path only. `CocoonFsImage.open` authenticates the whole image before it
returns, in this order (each step's failure has its own error):

1. static header (magic, version, layout, torn-write check): `NotAnImageError`,
   `UnsupportedVersionError`, `FormatError`;
2. a pending journal at the journal log head is refused (`FormatError`: replay is not
   implemented, and the mutable header may not be trusted until it is replayed);
3. the pre-authentication HMAC over the encrypted inode index entry leaf, the first value
   that depends on the key: `WrongKeyError`. A tampered entry leaf or mutable header
   fails here too; the format cannot tell the two apart at this point;
4. the auth tree and bitmap extents lists (inline HMACs), then the root HMAC over the root
   node, the encrypted update counter and the image context: `IntegrityError`;
5. every authentication tree node and every Authentication Tree Data Block digest of the
   image against the stored tree: `IntegrityError`.

Only then are the inode index and file contents decrypted, so `read_file` returns only
authenticated data. The whole image is held in memory; CocoonFs images are small (the SVSM
uses 8 MiB).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from cryptography.hazmat.primitives import constant_time
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from cvmstore.cocoonfs.auxmeta import walk_aux_groups
from cvmstore.cocoonfs.entities import chained_tag
from cvmstore.cocoonfs.keys import (
    InodeKeySubdomain,
    KeyPurpose,
    cipher_algorithm,
    derive_root_key,
    derive_subkey,
    hmac_digest,
)
from cvmstore.cocoonfs.layout import (
    CIPHER_BLOCK_LEN,
    FORMAT_VERSION,
    MAGIC,
    CipherAlg,
    ImageLayout,
    MutableHeader,
    StaticHeader,
    align_up,
    decode_block_ptr,
    decode_extent_ptr,
    remove_extent_integrity,
)
from cvmstore.cocoonfs.tree import AuthSubject, Extent, TreeGeometry
from cvmstore.errors import (
    CvmstoreError,
    FormatError,
    IntegrityError,
    PathNotFoundError,
    WrongKeyError,
)

__all__ = ["CocoonFsImage", "InodeEntry", "SpecialInode"]

JOURNAL_MAGIC = b"CCFSJRNL"
_IV_LEN = CIPHER_BLOCK_LEN
_U64 = struct.Struct("<Q")
#: The first inode number available to applications (0-15 are reserved).
FIRST_USER_INODE = 16


class SpecialInode(IntEnum):
    """Reserved inode numbers (section "Fundamental structures and encodings")."""

    AUTH_TREE = 1
    ALLOC_BITMAP = 2
    INDEX_ROOT = 3
    JOURNAL_LOG = 5
    UPDATE_COUNTER = 6


_AuthSubject = AuthSubject


class _AllAllocated:
    """A bitmap stand-in that says every block is allocated (see the lazy open)."""

    def __getitem__(self, index: int) -> int:
        return 0xFF


_ALL_ALLOCATED: Any = _AllAllocated()

#: Identifier of the chained extents' associated data for an inode extents list.
_AAD_KIND_INODE_EXTENTS_LIST = 2


@dataclass(frozen=True, slots=True)
class InodeEntry:
    """One inode index entry: number, 32-bit flags, and its raw encoded extent pointer."""

    inode: int
    flags: int
    extent_ptr: bytes


def _cbc_decrypt(alg: CipherAlg, key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    decryptor = Cipher(cipher_algorithm(alg, key), modes.CBC(iv)).decryptor()
    return decryptor.update(ciphertext) + decryptor.finalize()


def _strip_padding(plain: bytes, what: str) -> bytes:
    """Undo a PKCS#7 padding followed by whole zero blocks.

    Sections "Encrypted extents" and "Encrypted chained extents".
    """
    end = len(plain)
    while end >= CIPHER_BLOCK_LEN and not any(plain[end - CIPHER_BLOCK_LEN : end]):
        end -= CIPHER_BLOCK_LEN
    if end == 0:
        raise FormatError(f"CocoonFs {what}: no PKCS#7 padding")
    pad = plain[end - 1]
    if not 1 <= pad <= CIPHER_BLOCK_LEN or plain[end - pad : end] != bytes([pad]) * pad:
        raise FormatError(f"CocoonFs {what}: bad PKCS#7 padding")
    return plain[: end - pad]


def _uleb128(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise FormatError("CocoonFs extents list: truncated or overlong LEB128")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _sleb128(data: bytes, pos: int) -> tuple[int, int]:
    value, end = _uleb128(data, pos)
    bits = 7 * (end - pos)
    if data[end - 1] & 0x40:
        value -= 1 << bits
    return value, end


def _encode_uleb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _encode_sleb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        done = (value == 0 and not byte & 0x40) or (value == -1 and byte & 0x40)
        out.append(byte if done else byte | 0x80)
        if done:
            return bytes(out)


def decode_extents_list(data: bytes) -> list[Extent]:
    """Decode an encoded extents list (section "Encoded extents list").

    Raises:
        FormatError: truncated, unterminated, or an extent outside 0..2^64.
    """
    extents: list[Extent] = []
    pos = 0
    last_end = 0
    while True:
        delta, pos = _sleb128(data, pos)
        length, pos = _uleb128(data, pos)
        if length == 0:
            if delta != 0:
                raise FormatError("CocoonFs extents list: empty extent")
            return extents
        start = (last_end + delta) % (1 << 64)
        if start == 0 or start + length >= 1 << 57:
            raise FormatError("CocoonFs extents list: extent out of range")
        extents.append((start, length))
        last_end = start + length


def encode_extents_list(extents: list[Extent]) -> bytes:
    """Encode extents as an extents list, with its two-byte terminator."""
    out = bytearray()
    last_end = 0
    for start, length in extents:
        delta = start - last_end
        if delta >= 1 << 63:
            delta -= 1 << 64
        out += _encode_sleb128(delta) + _encode_uleb128(length)
        last_end = start + length
    return bytes(out + b"\x00\x00")


def entry_leaf_hmac(layout: ImageLayout, key: bytes, leaf_raw: bytes) -> bytes:
    """The pre-authentication HMAC of the encrypted inode index entry leaf.

    Section "Inode index entry leaf node preauthentication CCA protection digest".
    """
    return hmac_digest(
        layout.preauth_cca_protection_hmac_hash_alg,
        key,
        leaf_raw,
        struct.pack(">HH", layout.block_cipher_alg, layout.block_cipher_key_bits),
        bytes([0, _AuthSubject.INODE_INDEX_NODE]),
    )


def journal_head_extent(layout: ImageLayout, header_end: int) -> Extent:
    """The journal log head extent (section "Journal log encryption").

    At the first IO Block and data block aligned boundary after the mutable header; long
    enough for the minimum chained-extents head: magic, integrity section, two aux pointers,
    inline HMAC, IV and one cipher block holding the NIL next pointer and its padding.
    """
    align = 1 << max(
        layout.io_block_allocation_blocks_log2,
        layout.auth_tree_data_block_allocation_blocks_log2,
    )
    begin = align_up(header_end, align)
    head = (
        len(JOURNAL_MAGIC)
        + layout.integrity_section_len
        + 16
        + _IV_LEN
        + layout.preauth_cca_protection_hmac_hash_alg.digest_len
    )
    head = align_up(head, CIPHER_BLOCK_LEN) + CIPHER_BLOCK_LEN
    unit = align << layout.allocation_block_size_log2
    return begin, -(-head // unit) * align


def journal_pending(data: bytes, layout: ImageLayout, head: Extent) -> bool:
    """Whether the journal head holds a whole `CCFSJRNL` head (a torn one does not count)."""
    shift = layout.allocation_block_size_log2
    raw = data[head[0] << shift : (head[0] + head[1]) << shift]
    if raw[: len(JOURNAL_MAGIC)] != JOURNAL_MAGIC or len(raw) != head[1] << shift:
        return False
    restored = remove_extent_integrity(raw, len(JOURNAL_MAGIC), 0, layout.io_block_128b_log2)
    return restored is not None


def header_end_of(static: StaticHeader) -> int:
    """The first Allocation Block after the mutable header."""
    layout = static.layout
    shift = layout.allocation_block_size_log2
    return (static.encoded_len >> shift) + -(-MutableHeader.encoded_len(layout) >> shift)


def encrypt_counter(layout: ImageLayout, key: bytes, counter: int) -> bytes:
    """The encrypted update counter (section "Filesystem update counter"): zero IV."""
    plain = counter.to_bytes(16, "little")
    plain += bytes(layout.encrypted_update_counter_len - len(plain))
    encryptor = Cipher(
        cipher_algorithm(layout.block_cipher_alg, key), modes.CBC(bytes(CIPHER_BLOCK_LEN))
    ).encryptor()
    return encryptor.update(plain) + encryptor.finalize()


def alloc_map_of(bitmap: bytes | bytearray, image_size: int) -> bytearray:
    """One byte per Allocation Block of the image, 1 if the bitmap marks it allocated."""
    whole = bitmap[: -(-image_size // 8)]
    if not whole:
        return bytearray(image_size)
    # The bitmap as one integer, its binary digits reversed: bit n is block n (C speed).
    digits = bin(int.from_bytes(whole, "little"))[2:][::-1]
    digits = digits.ljust(image_size, "0")[:image_size]
    return bytearray(digits.encode().translate(_DIGIT_TO_BIT))


_DIGIT_TO_BIT = bytes.maketrans(b"01", b"\x00\x01")


def image_context_digest(
    layout: ImageLayout,
    root_hmac_key: bytes,
    entry_leaf_ptr: bytes,
    image_size: int,
    tree_extents: list[Extent],
    bitmap_extents: list[Extent],
) -> bytes:
    """The image context digest (section "Authentication tree root node digest")."""
    return hmac_digest(
        layout.auth_tree_root_hmac_hash_alg,
        root_hmac_key,
        MAGIC,
        bytes([FORMAT_VERSION]),
        layout.encode(),
        entry_leaf_ptr,
        _U64.pack(image_size),
        encode_extents_list(tree_extents),
        encode_extents_list(bitmap_extents),
        bytes([0, _AuthSubject.IMAGE_CONTEXT]),
    )


class CocoonFsImage:
    """An opened, fully authenticated CocoonFs v1 image (read-only)."""

    def __init__(self, opened: _Opener) -> None:
        #: What opening learnt on the way (headers, extents, bitmap, index, verified tree):
        #: everything below is read from it, and the writer starts from it.
        self._opened = opened

    @property
    def static_header(self) -> StaticHeader:
        """The static image header."""
        return self._opened.static

    @property
    def mutable_header(self) -> MutableHeader:
        """The mutable image header (root HMAC, counter, entry leaf, aux heads)."""
        return self._opened.mutable

    @property
    def update_counter(self) -> int:
        """The decrypted 128-bit update counter, authenticated by the root HMAC.

        Section "Filesystem update counter".
        """
        return self._opened.counter

    @property
    def layout(self) -> ImageLayout:
        """The image layout of the static header."""
        return self._opened.layout

    @classmethod
    def open(cls, data: bytes, key: bytes, *, lazy: bool = False) -> CocoonFsImage:
        """Authenticate the image `data` under the raw key material `key` and index it.

        A pending journal is replayed in memory (the bytes given are not changed): the result
        is the committed state. `CocoonFsVolume.open` also writes the replay back.

        By default every data block and tree node is checked before this returns. With
        `lazy`, only the headers, the root, the bitmap and the inode index are; each file's
        blocks are then authenticated when it is read (what the Rust tool does).

        Raises:
            NotAnImageError: no CocoonFs magic.
            UnsupportedVersionError: a format version other than 1.
            FormatError: malformed headers, metadata or journal.
            WrongKeyError: the inode index entry leaf (or a pending journal's head) does not
                authenticate under `key`.
            IntegrityError: any other authentication failure.
        """
        from cvmstore.cocoonfs.volume import replay

        replayed = replay(data, key)
        if replayed is not None:
            return replayed[0]
        return _Opener(data, key, lazy=lazy).run(cls)

    @property
    def data(self) -> bytes:
        """The image bytes (what is read from them is authenticated first)."""
        return self._opened.data

    def entry(self, inode: int) -> InodeEntry | None:
        """The index entry of `inode` (any inode, the special ones too), or None."""
        return self._opened.entries.get(inode)

    def list_files(self) -> list[InodeEntry]:
        """The application inodes (numbers 16 and up), in ascending order."""
        return [e for n, e in sorted(self._opened.entries.items()) if n >= FIRST_USER_INODE]

    def read_file(self, inode: int) -> bytes:
        """The whole content of `inode`.

        Raises:
            PathNotFoundError: no such inode.
            FormatError: malformed extents or padding.
        """
        entry = self._opened.entries.get(inode)
        if entry is None:
            raise PathNotFoundError(f"CocoonFs inode {inode} does not exist")
        tree = self._opened.tree
        extents = _inode_extents(
            self.data, self.layout, self._opened.root_key, entry, None, None, tree.check_extent
        )
        if not extents:
            return b""
        for extent in extents:
            tree.check_extent(extent)
        raw = b"".join(_extent_bytes(self.data, self.layout, e) for e in extents)
        ct_len = (len(raw) - _IV_LEN) // CIPHER_BLOCK_LEN * CIPHER_BLOCK_LEN
        if ct_len <= 0:
            raise FormatError(f"CocoonFs inode {inode}: extents too short")
        key = self._opened.subkey(KeyPurpose.ENCRYPTION, inode, InodeKeySubdomain.DATA)
        plain = _cbc_decrypt(
            self.layout.block_cipher_alg, key, raw[:_IV_LEN], raw[_IV_LEN : _IV_LEN + ct_len]
        )
        return _strip_padding(plain, f"inode {inode}")


def _extent_bytes(data: bytes, layout: ImageLayout, extent: Extent) -> bytes:
    start, length = extent
    shift = layout.allocation_block_size_log2
    begin, end = start << shift, (start + length) << shift
    if end > len(data):
        raise FormatError("CocoonFs extent beyond the end of the image")
    return data[begin:end]


def _read_chained_extents(
    data: bytes,
    layout: ImageLayout,
    first: Extent,
    enc_key: bytes,
    auth: tuple[bytes, bytes] | None,
    visited: list[Extent] | None = None,
    check: Callable[[Extent], None] | None = None,
    *,
    head: tuple[bytes, int] | None = None,
    head_error: type[CvmstoreError] = IntegrityError,
) -> bytes:
    """Decrypt an encrypted chained extents entity (section "Encrypted chained extents").

    `auth` is (HMAC key, associated data) for the inline authenticated variant. `head` is
    (the first extent as restored from its integrity protection, its plaintext header's
    length) for an entity with a plaintext header (the journal log); `head_error` is raised
    when the first extent's tag fails. `check` sees each extent before it is decrypted.

    Raises:
        IntegrityError: an inline HMAC does not match (`head_error` for the first extent).
        FormatError: a malformed chain or padding.
    """
    tag_len = layout.preauth_cca_protection_hmac_hash_alg.digest_len if auth else 0
    iv = b""
    prev_tag = bytes(tag_len)
    chunks: list[bytes] = []
    current: Extent | None = first
    seen: set[int] = set()
    while current is not None:
        if current[0] in seen or len(seen) > len(data) // layout.allocation_block_size:
            raise FormatError("CocoonFs chained extents: the chain loops")
        is_first = not seen
        seen.add(current[0])
        if visited is not None:
            visited.append(current)
        if check is not None:
            check(current)
        header_len = head[1] if is_first and head else 0
        raw = head[0] if is_first and head else _extent_bytes(data, layout, current)
        # The first extent holds [header] [tag] IV; a continuation extent holds [tag] (the
        # inline authenticated variant stores the tag before the IV).
        at = header_len + tag_len
        if is_first:
            iv = raw[at : at + _IV_LEN]
        if auth:
            tag = raw[header_len:at]
            body = raw[:header_len] + prev_tag + raw[at:]
            expect = chained_tag(layout, auth[0], body, iv, auth[1], first=is_first)
            if not constant_time.bytes_eq(tag, expect):
                error = head_error if is_first else IntegrityError
                raise error("CocoonFs chained extents: inline HMAC mismatch")
            prev_tag = tag
        ciphertext = raw[align_up(at + (_IV_LEN if is_first else 0), CIPHER_BLOCK_LEN) :]
        if len(ciphertext) < CIPHER_BLOCK_LEN or len(ciphertext) % CIPHER_BLOCK_LEN:
            raise FormatError("CocoonFs chained extents: extent too short")
        plain = _cbc_decrypt(layout.block_cipher_alg, enc_key, iv, ciphertext)
        iv = ciphertext[-CIPHER_BLOCK_LEN:]
        nxt = decode_extent_ptr(plain[:8])
        if nxt is not None and nxt[2]:
            raise FormatError("CocoonFs chained extents: indirect link")
        current = None if nxt is None else (nxt[0], nxt[1])
        chunks.append(plain[8:])
    return _strip_padding(b"".join(chunks), "chained extents")


def _inode_extents(
    data: bytes,
    layout: ImageLayout,
    root_key: bytes,
    entry: InodeEntry,
    inline_auth: bool | None,
    chain: list[Extent] | None = None,
    check: Callable[[Extent], None] | None = None,
) -> list[Extent]:
    """Where an inode's data lives (section "Inode extents lists"); [] for NIL."""
    ptr = decode_extent_ptr(entry.extent_ptr)
    if ptr is None:
        return []
    start, length, indirect = ptr
    if not indirect:
        return [(start, length)]
    enc_key = derive_subkey(
        root_key, layout, KeyPurpose.ENCRYPTION, entry.inode, InodeKeySubdomain.EXTENTS_LIST
    )
    auth = None
    if inline_auth:
        hmac_key = derive_subkey(
            root_key,
            layout,
            KeyPurpose.PREAUTH_CCA_PROTECTION_AUTH,
            entry.inode,
            InodeKeySubdomain.EXTENTS_LIST,
        )
        auth = (hmac_key, _U64.pack(entry.inode) + bytes([0, _AAD_KIND_INODE_EXTENTS_LIST]))
    payload = _read_chained_extents(data, layout, (start, length), enc_key, auth, chain, check)
    extents = decode_extents_list(payload)
    if not extents:
        raise FormatError(f"CocoonFs inode {entry.inode}: empty extents list")
    return extents


def _decrypt_block(layout: ImageLayout, key: bytes, raw: bytes, payload_len: int) -> bytes:
    """Decrypt an encrypted block (section "Encrypted block") to `payload_len` bytes."""
    ct_len = align_up(payload_len, CIPHER_BLOCK_LEN)
    if _IV_LEN + ct_len > len(raw):
        raise FormatError("CocoonFs encrypted block too short")
    plain = _cbc_decrypt(
        layout.block_cipher_alg, key, raw[:_IV_LEN], raw[_IV_LEN : _IV_LEN + ct_len]
    )
    return plain[:payload_len]


def _leaf_entries(layout: ImageLayout, plain: bytes) -> tuple[int | None, list[InodeEntry]]:
    """Decode a decrypted index leaf: (next leaf, occupied entries)."""
    slots = (len(plain) - 12) // 20
    (level,) = struct.unpack_from("<I", plain, 8 + 20 * slots)
    if level != 1:
        raise FormatError(f"CocoonFs inode index: leaf at level {level}")
    entries: list[InodeEntry] = []
    for i in range(slots):
        (inode,) = _U64.unpack_from(plain, 8 + 8 * slots + 8 * i)
        if inode == 0:
            continue
        if (entries and inode <= entries[-1].inode) or len(entries) != i:
            raise FormatError("CocoonFs inode index: leaf entries unsorted or with gaps")
        (flags,) = struct.unpack_from("<I", plain, 8 + 16 * slots + 4 * i)
        entries.append(InodeEntry(inode, flags, plain[8 + 8 * i : 16 + 8 * i]))
    return decode_block_ptr(plain[:8]), entries


class _Opener:
    """The opening sequence; one instance per `CocoonFsImage.open` call."""

    def __init__(
        self, data: bytes, key: bytes, *, journal_applied: bool = False, lazy: bool = False
    ) -> None:
        self.data = data
        self.key_material = key
        # Lazy: authenticate what is read, when it is read (as the Rust tool does), instead
        # of every data block and node at open.
        self.lazy = lazy
        # Set by journal replay, which opens the image as the journal will have made it.
        self.journal_applied = journal_applied
        self.index_nodes: list[Extent] = []

    def subkey(self, purpose: KeyPurpose, domain: int, subdomain: int) -> bytes:
        """A subkey of this image's root key, derived once per opening."""
        cache: dict[tuple[int, int, int], bytes] = self.__dict__.setdefault("_subkeys", {})
        found = cache.get((purpose, domain, subdomain))
        if found is None:
            found = cache[purpose, domain, subdomain] = derive_subkey(
                self.root_key, self.layout, purpose, domain, subdomain
            )
        return found

    def entry_leaf_hmac(self, leaf_raw: bytes) -> bytes:
        """The pre-authentication HMAC of an encrypted entry leaf under this image's key."""
        key = self.subkey(
            KeyPurpose.PREAUTH_CCA_PROTECTION_AUTH, SpecialInode.INDEX_ROOT, InodeKeySubdomain.DATA
        )
        return entry_leaf_hmac(self.layout, key, leaf_raw)

    def run(self, cls: type[CocoonFsImage]) -> CocoonFsImage:
        data = self.data
        static = StaticHeader.decode(data)
        layout = self.layout = static.layout
        shift = layout.allocation_block_size_log2
        mutable_at = static.encoded_len
        mutable = MutableHeader.decode(
            data[mutable_at : mutable_at + MutableHeader.encoded_len(layout)], layout
        )
        self.image_size = mutable.image_size_allocation_blocks
        if self.image_size << shift > len(data):
            raise FormatError("CocoonFs image shorter than its recorded size")
        self.header_end = header_end_of(static)
        journal_head = self._journal_head()
        self.journal_head = journal_head
        if journal_pending(data, layout, journal_head) and not self.journal_applied:
            raise FormatError("CocoonFs image has a pending journal: replay it first")
        self.root_key = derive_root_key(self.key_material, layout, static.salt)

        # Step 6: the entry leaf, authenticated by its pre-authentication HMAC.
        leaf_size = layout.index_leaf_node_size
        leaf_at = mutable.entry_leaf << shift
        leaf_raw = data[leaf_at : leaf_at + leaf_size]
        if len(leaf_raw) != leaf_size:
            raise FormatError("CocoonFs inode index entry leaf beyond the image")
        expect = self.entry_leaf_hmac(leaf_raw)
        if not constant_time.bytes_eq(expect, mutable.entry_leaf_preauth_hmac):
            raise WrongKeyError("CocoonFs: the inode index entry leaf does not authenticate")
        index_key = self.subkey(
            KeyPurpose.ENCRYPTION, SpecialInode.INDEX_ROOT, InodeKeySubdomain.DATA
        )
        _, entry_leaf = _leaf_entries(
            layout, _decrypt_block(layout, index_key, leaf_raw, leaf_size - _IV_LEN)
        )
        special = {e.inode: e for e in entry_leaf if e.inode < FIRST_USER_INODE}
        for needed in (SpecialInode.AUTH_TREE, SpecialInode.ALLOC_BITMAP, SpecialInode.INDEX_ROOT):
            if needed not in special:
                raise FormatError(f"CocoonFs entry leaf lacks special inode {needed.value}")

        # Steps 7-8: auth tree and bitmap extents; then the root HMAC.
        self.special_chains: dict[int, list[Extent]] = {1: [], 2: []}
        tree_extents = _inode_extents(
            data, layout, self.root_key, special[SpecialInode.AUTH_TREE], True,
            self.special_chains[1],
        )  # fmt: skip
        bitmap_extents = _inode_extents(
            data, layout, self.root_key, special[SpecialInode.ALLOC_BITMAP], True,
            self.special_chains[2],
        )  # fmt: skip
        self.tree_extents = tree_extents
        self.bitmap_extents = bitmap_extents
        self.mutable = mutable
        self.static = static
        if not tree_extents or not bitmap_extents:
            raise FormatError("CocoonFs: auth tree or allocation bitmap without extents")
        tree = self.tree = _AuthTree(self, tree_extents)
        image_context = image_context_digest(
            layout,
            tree.root_hmac_key,
            mutable.entry_leaf_ptr_raw,
            self.image_size,
            tree_extents,
            bitmap_extents,
        )
        if self.journal_applied:
            self._rebuild_tree(tree, bitmap_extents, mutable)
        tree.verify_root(mutable.root_hmac, mutable.encrypted_update_counter, image_context)

        # Step 9-11: bitmap, then every data block and node through the tree.
        self.aux_extents = self._aux_extents(mutable)
        self.skipped = [journal_head, *self.aux_extents]
        if self.lazy:
            # Bitmap extents are data block aligned, so their blocks count as allocated
            # before the bitmap is known: authenticate them, then decrypt.
            self.bitmap = _ALL_ALLOCATED
            tree.check_blocks(b for start, n in bitmap_extents for b in range(start, start + n))
        bitmap = self.bitmap = self._read_bitmap(bitmap_extents)
        self.alloc_map = alloc_map_of(bitmap, self.image_size)
        self._check_aux_extents()
        if not self.lazy:
            tree.verify_all(bitmap, self.skipped)

        # Step 12: the whole inode index, now authenticated.
        entries = self._walk_index(special[SpecialInode.INDEX_ROOT], index_key, mutable.entry_leaf)
        counter_key = self.subkey(
            KeyPurpose.ENCRYPTION, SpecialInode.UPDATE_COUNTER, InodeKeySubdomain.DATA
        )
        counter_plain = _cbc_decrypt(
            layout.block_cipher_alg,
            counter_key,
            bytes(CIPHER_BLOCK_LEN),
            mutable.encrypted_update_counter,
        )
        counter = int.from_bytes(counter_plain[:16], "little")
        self.entries = entries
        self.counter = counter
        return cls(self)

    def _journal_head(self) -> Extent:
        return journal_head_extent(self.layout, self.header_end)

    def _rebuild_tree(
        self, tree: _AuthTree, bitmap_extents: list[Extent], mutable: MutableHeader
    ) -> None:
        """Journal replay: recompute every node from the data the journal left, in memory.

        The root HMAC check that follows decides whether the result is the committed state.
        """
        bitmap = self._read_bitmap(bitmap_extents)
        skipped = [self.journal_head, *self._aux_extents(mutable)]
        geometry = tree.geometry
        nodes = geometry.build(data_block_digests(self, geometry, bitmap, skipped))
        patched = bytearray(self.data)
        for node, entries in nodes.items():
            at = geometry.node_byte_offset(node)
            patched[at : at + len(entries)] = entries
        self.data = bytes(patched)

    def _check_aux_extents(self) -> None:
        """Every aux metadata extent must be aligned and allocated in the authentic bitmap.

        The list is not authenticated, yet it decides which blocks the digests skip: this
        keeps the host from declaring free (soon live) space skipped.
        """
        layout = self.layout
        align = 1 << max(
            layout.io_block_allocation_blocks_log2,
            layout.auth_tree_data_block_allocation_blocks_log2,
        )
        for start, length in self.aux_extents:
            if start % align or length % align or start + length > self.image_size:
                raise FormatError("CocoonFs aux metadata extent not aligned or beyond the image")
            if not all(self.alloc_map[start : start + length]):
                raise FormatError("CocoonFs aux metadata extent is not allocated in the bitmap")

    def _aux_extents(self, mutable: MutableHeader) -> list[Extent]:
        """All auxiliary metadata extents (section "Storage in a formatted filesystem")."""
        groups = walk_aux_groups(self.data, self.layout, mutable.aux_fs_metadata_heads)
        return [extent for group in groups for extent in group.extents]

    def _read_bitmap(self, extents: list[Extent]) -> bytes:
        """The decrypted allocation bitmap (section "Allocation bitmap")."""
        layout = self.layout
        block = layout.allocation_bitmap_file_block_size
        key = self.subkey(KeyPurpose.ENCRYPTION, SpecialInode.ALLOC_BITMAP, InodeKeySubdomain.DATA)
        words_len = (block - _IV_LEN) // 8 * 8
        out = bytearray()
        for extent in extents:
            raw = _extent_bytes(self.data, layout, extent)
            if len(raw) % block:
                raise FormatError("CocoonFs allocation bitmap extent not whole file blocks")
            for at in range(0, len(raw), block):
                out += _decrypt_block(layout, key, raw[at : at + block], words_len)
        if len(out) * 8 < self.image_size:
            raise FormatError("CocoonFs allocation bitmap shorter than the image")
        return bytes(out)

    def _walk_index(self, root: InodeEntry, key: bytes, entry_leaf: int) -> dict[int, InodeEntry]:
        """Every inode of the index B+-tree (section "Inode index")."""
        layout = self.layout
        ptr = decode_extent_ptr(root.extent_ptr)
        if ptr is None or ptr[2]:
            raise FormatError("CocoonFs inode index root must be a direct extent")
        shift = layout.allocation_block_size_log2
        entries: dict[int, InodeEntry] = {}
        leaves: list[int] = []

        def visit(start: int, level: int, depth: int) -> None:
            if depth > 64:
                raise FormatError("CocoonFs inode index too deep")
            size = layout.index_leaf_node_size if level == 1 else layout.index_internal_node_size
            raw = self.data[start << shift : (start << shift) + size]
            if len(raw) != size:
                raise FormatError("CocoonFs inode index node beyond the image")
            self.tree.check_blocks(range(start, start + (size >> shift)))
            plain = _decrypt_block(layout, key, raw, size - _IV_LEN)
            self.index_nodes.append((start, size >> shift))
            if level == 1:
                leaves.append(start)
                _, found = _leaf_entries(layout, plain)
                for e in found:
                    if e.inode in entries:
                        raise FormatError(f"CocoonFs inode index: inode {e.inode} twice")
                    entries[e.inode] = e
                return
            slots = (len(plain) - 12) // 16
            (node_level,) = struct.unpack_from("<I", plain, 8 + 16 * slots)
            if node_level != level:
                raise FormatError("CocoonFs inode index: node at the wrong level")
            children = [decode_block_ptr(plain[8 * i : 8 * i + 8]) for i in range(slots + 1)]
            occupied = [c for c in children if c is not None]
            if len(occupied) < 2 or children[: len(occupied)] != occupied:
                raise FormatError("CocoonFs inode index: malformed internal node")
            for child in occupied:
                visit(child, level - 1, depth + 1)

        # The root is a leaf exactly when it is the entry leaf (a one-node tree); otherwise
        # it is an internal node whose level says how deep the tree is.
        if ptr[0] == entry_leaf:
            if ptr[1] << shift != layout.index_leaf_node_size:
                raise FormatError("CocoonFs inode index root extent is not one leaf node")
            visit(ptr[0], 1, 0)
        else:
            size = layout.index_internal_node_size
            if ptr[1] << shift != size:
                raise FormatError("CocoonFs inode index root extent is not one internal node")
            self.tree.check_blocks(range(ptr[0], ptr[0] + ptr[1]))
            root_at = ptr[0] << shift
            plain = _decrypt_block(layout, key, self.data[root_at : root_at + size], size - _IV_LEN)
            (root_level,) = struct.unpack_from("<I", plain, 8 + 16 * ((len(plain) - 12) // 16))
            if not 2 <= root_level <= 64:
                raise FormatError("CocoonFs inode index root at an impossible level")
            visit(ptr[0], root_level, 0)
        if not leaves or leaves[0] != entry_leaf:
            raise FormatError("CocoonFs: the entry leaf is not the leftmost index leaf")
        ordered = sorted(entries)
        if list(entries) != ordered:
            raise FormatError("CocoonFs inode index: keys out of order")
        return entries


class _AuthTree:
    """The authentication tree (section "Authentication tree") over one opened image."""

    def __init__(self, opener: _Opener, extents: list[Extent]) -> None:
        self.opener = opener
        self.layout = opener.layout
        self.geometry = TreeGeometry(opener.layout, extents, opener.image_size)
        self.extents = self.geometry.extents
        self.root_hmac_key = opener.subkey(KeyPurpose.AUTH_ROOT, SpecialInode.AUTH_TREE, 0)
        #: Entries of the nodes known to be authentic (the root after `verify_root`; all of
        #: them after `verify_all`; the rest on demand, each against its verified parent).
        self.verified: dict[int, bytes] = {}
        #: Data blocks whose current content was checked against the tree.
        self.checked_blocks: set[int] = set()

    def entries(self, node: int) -> bytes:
        """The authentic entries of `node`, verified up the path to the root on first use.

        Raises:
            IntegrityError: a stored node does not match its parent's digest.
        """
        found = self.verified.get(node)
        if found is not None:
            return found
        geometry = self.geometry
        level, begin, parent, j = geometry.locate(node)
        parent_entries = self.entries(parent)
        size = self.layout.auth_tree_node_hash_alg.digest_len
        stored = self.stored_node(node, level)
        expect = parent_entries[j * size : (j + 1) * size]
        if not constant_time.bytes_eq(geometry.child_digest(level, begin, stored), expect):
            raise IntegrityError(f"CocoonFs: auth tree node at level {level} does not match")
        self.verified[node] = stored
        return stored

    def leaf_digest(self, index: int) -> bytes:
        """The authentic stored digest of data block `index` (index domain)."""
        size = self.layout.auth_tree_data_hmac_hash_alg.digest_len
        leaf, _, begin = self.geometry.path(index)[-1]
        j = index - begin
        return self.entries(leaf)[j * size : (j + 1) * size]

    def check_blocks(self, blocks: Iterable[int]) -> None:
        """Authenticate the data blocks holding Allocation Blocks `blocks` against the tree.

        Raises:
            IntegrityError: a data block's content or allocation does not match.
        """
        geometry = self.geometry
        opener = self.opener
        pending = {
            i
            for b in blocks
            if (i := geometry.data_index(b)) is not None and i not in self.checked_blocks
        }
        if not pending:
            return
        key = opener.subkey(KeyPurpose.AUTH_DATA, SpecialInode.AUTH_TREE, 0)
        counted = counted_blocks(opener, opener.bitmap, opener.skipped)
        per = 1 << geometry.a
        for index in sorted(pending):
            phys = geometry.data_block_start(index)
            digest = geometry.data_digest(key, opener.data, index, counted(phys, per))
            if not constant_time.bytes_eq(digest, self.leaf_digest(index)):
                raise IntegrityError(
                    f"CocoonFs: data block at Allocation Block {phys} does not authenticate"
                )
            self.checked_blocks.add(index)

    def check_extent(self, extent: Extent) -> None:
        """`check_blocks` over one extent."""
        self.check_blocks(range(extent[0], extent[0] + extent[1]))

    def stored_node(self, node: int, level: int) -> bytes:
        """Node `node`'s digests as stored in the image."""
        at = self.geometry.node_byte_offset(node)
        return self.opener.data[at : at + self.geometry.entries_len(level)]

    def verify_root(self, root_hmac: bytes, encrypted_counter: bytes, image_context: bytes) -> None:
        """Check the root HMAC of the mutable header.

        Section "Authentication tree root node digest".
        """
        geometry = self.geometry
        expect = root_hmac_digest(
            self.layout,
            self.root_hmac_key,
            self.stored_node(0, geometry.levels - 1),
            geometry.root_position(),
            encrypted_counter,
            image_context,
        )
        if not constant_time.bytes_eq(expect, root_hmac):
            raise IntegrityError("CocoonFs: the authentication tree root HMAC does not match")
        self.verified[0] = self.stored_node(0, geometry.levels - 1)

    def verify_all(self, bitmap: bytes, skipped: list[Extent]) -> None:
        """Check every stored node and every data block digest of the image."""
        geometry = self.geometry
        digests = data_block_digests(self.opener, geometry, bitmap, skipped)
        nodes = geometry.build(digests)

        def check(node: int, level: int, begin: int) -> None:
            if not constant_time.bytes_eq(self.stored_node(node, level), nodes[node]):
                if level == 0:
                    raise IntegrityError(
                        f"CocoonFs: a data block in {begin}..{begin + (1 << geometry.d) - 1} "
                        "does not authenticate"
                    )
                raise IntegrityError(f"CocoonFs: auth tree node at level {level} does not match")
            if level:
                for j in range(1 << geometry.c):
                    child_begin = begin + j * geometry.span(level - 1)
                    if child_begin < geometry.data_block_count:
                        child = node + 1 + j * geometry.subtree_nodes(level - 1)
                        check(child, level - 1, child_begin)

        # Top-down is as strict as bottom-up: every node is compared with its recomputation.
        check(0, geometry.levels - 1, 0)
        self.verified = nodes
        self.checked_blocks = set(range(geometry.data_block_count))


def root_hmac_digest(
    layout: ImageLayout,
    key: bytes,
    root_entries: bytes,
    position: int,
    encrypted_counter: bytes,
    image_context: bytes,
) -> bytes:
    """The root HMAC (section "Authentication tree root node digest")."""
    return hmac_digest(
        layout.auth_tree_root_hmac_hash_alg,
        key,
        root_entries,
        _U64.pack(position),
        encrypted_counter,
        image_context,
        bytes([0, _AuthSubject.AUTH_TREE_ROOT_NODE]),
    )


def counted_blocks(
    opener: _Opener, bitmap: bytes | bytearray, skipped: list[Extent]
) -> Callable[[int, int], list[bool]]:
    """Per data block, which of its Allocation Blocks the digest counts.

    Those allocated, inside the image, and not the header, the journal head or aux metadata
    (authenticated as if free).
    """
    excluded: set[int] = set()
    for start, length in skipped:
        excluded.update(range(start, start + length))
    header_end, image_size = opener.header_end, opener.image_size

    def counted(phys: int, count: int) -> list[bool]:
        return [
            header_end <= b < image_size
            and b not in excluded
            and bool(bitmap[b >> 3] >> (b & 7) & 1)
            for b in range(phys, phys + count)
        ]

    return counted


def data_block_digests(
    opener: _Opener, geometry: TreeGeometry, bitmap: bytes | bytearray, skipped: list[Extent]
) -> list[bytes]:
    """Every data block digest of the image, in index domain order."""
    key = opener.subkey(KeyPurpose.AUTH_DATA, SpecialInode.AUTH_TREE, 0)
    counted = counted_blocks(opener, bitmap, skipped)
    per_block = 1 << geometry.a
    digests = [
        geometry.data_digest(key, opener.data, index, counted(phys, per_block))
        for index, phys in enumerate(geometry.data_block_starts())
    ]
    if len(digests) != geometry.data_block_count:
        raise FormatError("CocoonFs auth tree extents do not tile the image")
    return digests
