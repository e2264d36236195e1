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
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum

from cryptography.hazmat.decrepit.ciphers.algorithms import Camellia
from cryptography.hazmat.primitives import constant_time, hashes
from cryptography.hazmat.primitives.ciphers import BlockCipherAlgorithm, Cipher, algorithms, modes

from cvmstore.cocoonfs.keys import (
    InodeKeySubdomain,
    KeyPurpose,
    derive_root_key,
    derive_subkey,
    hash_algorithm,
    hmac_digest,
)
from cvmstore.cocoonfs.layout import (
    CHECKSUM_LEN,
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
)
from cvmstore.errors import FormatError, IntegrityError, PathNotFoundError, WrongKeyError

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


class _AuthSubject(IntEnum):
    """Authentication subject ids (section "Authentication contexts")."""

    IMAGE_CONTEXT = 1
    AUTH_TREE_ROOT_NODE = 2
    AUTH_TREE_DESCENDANT_NODE = 3
    AUTH_TREE_DATA_BLOCK = 4
    ENCRYPTION_ENTITY_CHAINED_EXTENTS = 5
    INODE_INDEX_NODE = 6


#: Identifier of the chained extents' associated data for an inode extents list.
_AAD_KIND_INODE_EXTENTS_LIST = 2

Extent = tuple[int, int]
"""(start, length) in Allocation Blocks."""


@dataclass(frozen=True, slots=True)
class InodeEntry:
    """One inode index entry: number, 32-bit flags, and its raw encoded extent pointer."""

    inode: int
    flags: int
    extent_ptr: bytes


def _cipher_algorithm(alg: CipherAlg, key: bytes) -> BlockCipherAlgorithm:
    if alg is CipherAlg.AES:
        return algorithms.AES(key)
    if alg is CipherAlg.SM4:
        return algorithms.SM4(key)
    return Camellia(key)


def _cbc_decrypt(alg: CipherAlg, key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    decryptor = Cipher(_cipher_algorithm(alg, key), modes.CBC(iv)).decryptor()
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


class CocoonFsImage:
    """An opened, fully authenticated CocoonFs v1 image (read-only)."""

    def __init__(
        self,
        data: bytes,
        static: StaticHeader,
        mutable: MutableHeader,
        root_key: bytes,
        entries: dict[int, InodeEntry],
        update_counter: int,
    ) -> None:
        self._data = data
        self.static_header = static
        self.mutable_header = mutable
        self._root_key = root_key
        self._entries = entries
        #: The decrypted 128-bit filesystem update counter (section "Filesystem update
        #: counter"), authenticated by the root HMAC.
        self.update_counter = update_counter

    @property
    def layout(self) -> ImageLayout:
        """The image layout of the static header."""
        return self.static_header.layout

    @classmethod
    def open(cls, data: bytes, key: bytes) -> CocoonFsImage:
        """Authenticate the image `data` under the raw key material `key` and index it.

        Raises:
            NotAnImageError: no CocoonFs magic.
            UnsupportedVersionError: a format version other than 1.
            FormatError: malformed headers or metadata, or a pending journal.
            WrongKeyError: the inode index entry leaf does not authenticate under `key`.
            IntegrityError: any other authentication failure.
        """
        return _Opener(data, key).run(cls)

    def list_files(self) -> list[InodeEntry]:
        """The application inodes (numbers 16 and up), in ascending order."""
        return [e for n, e in sorted(self._entries.items()) if n >= FIRST_USER_INODE]

    def read_file(self, inode: int) -> bytes:
        """The whole content of `inode`.

        Raises:
            PathNotFoundError: no such inode.
            FormatError: malformed extents or padding.
        """
        entry = self._entries.get(inode)
        if entry is None:
            raise PathNotFoundError(f"CocoonFs inode {inode} does not exist")
        extents = _inode_extents(self._data, self.layout, self._root_key, entry, None)
        if not extents:
            return b""
        raw = b"".join(_extent_bytes(self._data, self.layout, e) for e in extents)
        ct_len = (len(raw) - _IV_LEN) // CIPHER_BLOCK_LEN * CIPHER_BLOCK_LEN
        if ct_len <= 0:
            raise FormatError(f"CocoonFs inode {inode}: extents too short")
        key = derive_subkey(
            self._root_key, self.layout, KeyPurpose.ENCRYPTION, inode, InodeKeySubdomain.DATA
        )
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
) -> bytes:
    """Decrypt an encrypted chained extents entity that has no plaintext header.

    Section "Encrypted chained extents"; `auth` is (HMAC key, associated data) for the inline
    authenticated variant.

    Raises:
        IntegrityError: an inline HMAC does not match.
        FormatError: a malformed chain or padding.
    """
    tag_alg = layout.preauth_cca_protection_hmac_hash_alg
    tag_len = tag_alg.digest_len if auth else 0
    iv = b""
    prev_tag = bytes(tag_len)
    cipher_id = struct.pack(">HH", layout.block_cipher_alg, layout.block_cipher_key_bits)
    chunks: list[bytes] = []
    current: Extent | None = first
    seen: set[int] = set()
    while current is not None:
        if current[0] in seen or len(seen) > len(data) // layout.allocation_block_size:
            raise FormatError("CocoonFs chained extents: the chain loops")
        is_first = not seen
        seen.add(current[0])
        raw = _extent_bytes(data, layout, current)
        # The first extent holds [tag] IV; a continuation extent holds [tag] (the inline
        # authenticated variant stores the tag before the IV).
        pos = tag_len + (_IV_LEN if is_first else 0)
        if is_first:
            iv = raw[tag_len:pos]
        if auth:
            hmac_key, aad = auth
            tag = raw[:tag_len]
            expect = hmac_digest(
                tag_alg,
                hmac_key,
                prev_tag,
                raw[tag_len:],
                b"" if is_first else iv,
                aad,
                _U64.pack(len(aad)),
                cipher_id,
                bytes([0 if is_first else 1, 0, _AuthSubject.ENCRYPTION_ENTITY_CHAINED_EXTENTS]),
            )
            if not constant_time.bytes_eq(tag, expect):
                raise IntegrityError("CocoonFs chained extents: inline HMAC mismatch")
            prev_tag = tag
        pos = align_up(pos, CIPHER_BLOCK_LEN)
        ciphertext = raw[pos:]
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
    data: bytes, layout: ImageLayout, root_key: bytes, entry: InodeEntry, inline_auth: bool | None
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
    payload = _read_chained_extents(data, layout, (start, length), enc_key, auth)
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

    def __init__(self, data: bytes, key: bytes) -> None:
        self.data = data
        self.key_material = key

    def subkey(self, purpose: KeyPurpose, domain: int, subdomain: int) -> bytes:
        return derive_subkey(self.root_key, self.layout, purpose, domain, subdomain)

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
        self.header_end = (mutable_at >> shift) + -(-MutableHeader.encoded_len(layout) >> shift)
        journal_head = self._journal_head()
        if data[journal_head[0] << shift :][: len(JOURNAL_MAGIC)] == JOURNAL_MAGIC:
            raise FormatError("CocoonFs image has a pending journal; replay is not implemented")
        self.root_key = derive_root_key(self.key_material, layout, static.salt)

        # Step 6: the entry leaf, authenticated by its pre-authentication HMAC.
        leaf_size = layout.index_leaf_node_size
        leaf_raw = data[mutable.entry_leaf << shift :][:leaf_size]
        if len(leaf_raw) != leaf_size:
            raise FormatError("CocoonFs inode index entry leaf beyond the image")
        cipher_id = struct.pack(">HH", layout.block_cipher_alg, layout.block_cipher_key_bits)
        expect = hmac_digest(
            layout.preauth_cca_protection_hmac_hash_alg,
            self.subkey(
                KeyPurpose.PREAUTH_CCA_PROTECTION_AUTH,
                SpecialInode.INDEX_ROOT,
                InodeKeySubdomain.DATA,
            ),
            leaf_raw,
            cipher_id,
            bytes([0, _AuthSubject.INODE_INDEX_NODE]),
        )
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
        tree_extents = _inode_extents(
            data, layout, self.root_key, special[SpecialInode.AUTH_TREE], True
        )
        bitmap_extents = _inode_extents(
            data, layout, self.root_key, special[SpecialInode.ALLOC_BITMAP], True
        )
        if not tree_extents or not bitmap_extents:
            raise FormatError("CocoonFs: auth tree or allocation bitmap without extents")
        tree = _AuthTree(self, tree_extents)
        image_context = hmac_digest(
            layout.auth_tree_root_hmac_hash_alg,
            tree.root_hmac_key,
            MAGIC,
            bytes([FORMAT_VERSION]),
            layout.encode(),
            mutable.entry_leaf_ptr_raw,
            _U64.pack(self.image_size),
            encode_extents_list(tree_extents),
            encode_extents_list(bitmap_extents),
            bytes([0, _AuthSubject.IMAGE_CONTEXT]),
        )
        tree.verify_root(mutable.root_hmac, mutable.encrypted_update_counter, image_context)

        # Step 9-11: bitmap, then every data block and node through the tree.
        bitmap = self._read_bitmap(bitmap_extents)
        skipped = [journal_head, *self._aux_extents(mutable)]
        tree.verify_all(bitmap, skipped)

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
        return cls(data, static, mutable, self.root_key, entries, counter)

    def _journal_head(self) -> Extent:
        """The journal log head extent (section "Journal log encryption")."""
        layout = self.layout
        align = 1 << max(
            layout.io_block_allocation_blocks_log2,
            layout.auth_tree_data_block_allocation_blocks_log2,
        )
        begin = align_up(self.header_end, align)
        # Minimum head: magic, integrity section, two aux pointers, IV, inline HMAC, and one
        # cipher block holding the NIL next pointer and its padding.
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

    def _aux_extents(self, mutable: MutableHeader) -> list[Extent]:
        """All auxiliary metadata extents: the circular list from update group 0's head.

        Section "Storage in a formatted filesystem".
        """
        heads = [decode_extent_ptr(p) for p in mutable.aux_fs_metadata_heads]
        if heads[0] is None:
            if heads[1] is not None:
                raise FormatError("CocoonFs aux metadata: group 1 without group 0")
            return []
        head_starts = {h[0] for h in heads if h is not None}
        found: list[Extent] = []
        current: Extent = (heads[0][0], heads[0][1])
        next_but_one: Extent | None = None
        while True:
            if any(current[0] == f[0] for f in found):
                break
            if len(found) > 4096:
                raise FormatError("CocoonFs aux metadata: list does not close")
            found.append(current)
            raw = _extent_bytes(self.data, self.layout, current)
            offset = 17 if current[0] in head_starts else 16
            links = None
            if len(raw) >= 128 and 0 not in raw[:128]:
                mask = raw[offset + CHECKSUM_LEN]
                links = [decode_extent_ptr(bytes(b ^ mask for b in raw[i : i + 8])) for i in (0, 8)]
            if links is None or links[0] is None or links[1] is None:
                # A torn extent: the previous extent's second link skips it.
                if next_but_one is None:
                    raise FormatError("CocoonFs aux metadata: unreadable list")
                current, next_but_one = next_but_one, None
                continue
            current, next_but_one = links[0][:2], links[1][:2]
        return found

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
            raw = self.data[start << shift :][:size]
            if len(raw) != size:
                raise FormatError("CocoonFs inode index node beyond the image")
            plain = _decrypt_block(layout, key, raw, size - _IV_LEN)
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
            plain = _decrypt_block(layout, key, self.data[ptr[0] << shift :][:size], size - _IV_LEN)
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
        layout = opener.layout
        self.opener = opener
        self.layout = layout
        self.extents = sorted(extents)
        align = max(
            layout.io_block_allocation_blocks_log2,
            layout.auth_tree_data_block_allocation_blocks_log2,
        )
        for start, length in extents:
            if start % (1 << align) or (start + length) % (1 << align):
                raise FormatError("CocoonFs auth tree extents are not aligned")
        self.storage = b"".join(_extent_bytes(opener.data, layout, e) for e in extents)
        self.node_size = layout.auth_tree_node_size
        node_count = len(self.storage) // self.node_size
        if node_count == 0:
            raise FormatError("CocoonFs auth tree holds no node")
        node_log2 = layout.auth_tree_node_size_log2
        self.c = node_log2 - (layout.auth_tree_node_hash_alg.digest_len - 1).bit_length()
        self.d = node_log2 - (layout.auth_tree_data_hmac_hash_alg.digest_len - 1).bit_length()
        self.a = layout.auth_tree_data_block_allocation_blocks_log2
        self.levels = self._levels(node_count)
        tree_blocks = sum(length for _, length in extents)
        data_blocks = opener.image_size - tree_blocks
        if data_blocks < 0:
            raise FormatError("CocoonFs auth tree larger than the image")
        self.data_block_count = -(-data_blocks >> self.a)
        if self.data_block_count > 1 << (self.d + self.c * (self.levels - 1)):
            raise FormatError("CocoonFs auth tree too small for the image")
        self.root_hmac_key = opener.subkey(KeyPurpose.AUTH_ROOT, SpecialInode.AUTH_TREE, 0)

    def _levels(self, node_count: int) -> int:
        """The tree height deduced from the node count, capped as the spec requires.

        Section "Organization of the authentication tree storage".
        """
        c, d, a = self.c, self.d, self.a
        # Of N nodes in DFS pre-order, about N/2^c are internal; what remains is the leaf
        # count, and each level above the leaves divides it by 2^c.
        leaves = node_count - ((node_count - 1) >> c)
        levels = -(-max(leaves - 1, 0).bit_length() // c) + 1
        cap = -(-min(64, 64 - d - a + c) // c)
        return min(levels, cap)

    def _span(self, level: int) -> int:
        """Data blocks covered by one node at `level` (0 = leaf)."""
        return 1 << (self.d + self.c * level)

    def _subtree_nodes(self, level: int) -> int:
        """Nodes in a complete subtree whose root is at `level`."""
        fan = 1 << self.c
        return sum(fan**i for i in range(level + 1))

    def _last_entry_begin(self, level: int, begin: int) -> int:
        if level == 0:
            return begin + (1 << self.d) - 1
        return begin + ((1 << self.c) - 1) * self._span(level - 1)

    def _node(self, index: int, level: int) -> bytes:
        at = index * self.node_size
        if at + self.node_size > len(self.storage):
            raise IntegrityError("CocoonFs auth tree node missing from its extents")
        if level == 0:
            entries = (1 << self.d) * self.layout.auth_tree_data_hmac_hash_alg.digest_len
        else:
            entries = (1 << self.c) * self.layout.auth_tree_node_hash_alg.digest_len
        return self.storage[at : at + entries]

    def verify_root(self, root_hmac: bytes, encrypted_counter: bytes, image_context: bytes) -> None:
        """Check the root HMAC of the mutable header.

        Section "Authentication tree root node digest".
        """
        top = self.levels - 1
        position = self._last_entry_begin(top, 0) % (1 << 64)
        expect = hmac_digest(
            self.layout.auth_tree_root_hmac_hash_alg,
            self.root_hmac_key,
            self._node(0, top),
            _U64.pack(position),
            encrypted_counter,
            image_context,
            bytes([0, _AuthSubject.AUTH_TREE_ROOT_NODE]),
        )
        if not constant_time.bytes_eq(expect, root_hmac):
            raise IntegrityError("CocoonFs: the authentication tree root HMAC does not match")

    def verify_all(self, bitmap: bytes, skipped: list[Extent]) -> None:
        """Check every stored node and every data block digest of the image."""
        digests = self._data_block_digests(bitmap, skipped)
        self._verify_node(0, self.levels - 1, 0, digests)

    def _data_runs(self) -> Iterator[int]:
        """Physical Allocation Block starts of the data blocks, in index domain order.

        The index domain is the image with the auth tree's extents cut out.
        """
        step = 1 << self.a
        pos = 0
        for start, length in [*self.extents, (self.opener.image_size, 0)]:
            while pos < start:
                yield pos
                pos += step
            pos = max(pos, start + length)

    def _data_block_digests(self, bitmap: bytes, skipped: list[Extent]) -> list[bytes]:
        layout = self.layout
        opener = self.opener
        key = opener.subkey(KeyPurpose.AUTH_DATA, SpecialInode.AUTH_TREE, 0)
        block_shift = layout.allocation_block_size_log2
        excluded: set[int] = set()
        for start, length in skipped:
            excluded.update(range(start, start + length))
        digests: list[bytes] = []
        for index, phys in enumerate(self._data_runs()):
            parts: list[bytes] = []
            word = 0
            for j in range(1 << self.a):
                block = phys + j
                if block < opener.header_end or block in excluded or block >= opener.image_size:
                    continue
                if not bitmap[block >> 3] >> (block & 7) & 1:
                    continue
                parts.append(opener.data[block << block_shift : (block + 1) << block_shift])
                word |= 1 << j
            digests.append(
                hmac_digest(
                    layout.auth_tree_data_hmac_hash_alg,
                    key,
                    *parts,
                    _U64.pack(word),
                    _U64.pack(index),
                    bytes([0, _AuthSubject.AUTH_TREE_DATA_BLOCK]),
                )
            )
        if len(digests) != self.data_block_count:
            raise FormatError("CocoonFs auth tree extents do not tile the image")
        return digests

    def _verify_node(self, index: int, level: int, begin: int, digests: list[bytes]) -> bytes:
        node = self._node(index, level)
        if level == 0:
            size = self.layout.auth_tree_data_hmac_hash_alg.digest_len
            for j in range(1 << self.d):
                stored = node[j * size : (j + 1) * size]
                i = begin + j
                expect = digests[i] if i < len(digests) else bytes(size)
                if not constant_time.bytes_eq(stored, expect):
                    raise IntegrityError(f"CocoonFs: data block {i} does not authenticate")
            return node
        size = self.layout.auth_tree_node_hash_alg.digest_len
        child_nodes = self._subtree_nodes(level - 1)
        for j in range(1 << self.c):
            stored = node[j * size : (j + 1) * size]
            child_begin = begin + j * self._span(level - 1)
            if child_begin >= len(digests):
                expect = bytes(size)
            else:
                child = self._verify_node(
                    index + 1 + j * child_nodes, level - 1, child_begin, digests
                )
                h = hashes.Hash(hash_algorithm(self.layout.auth_tree_node_hash_alg))
                h.update(child)
                h.update(_U64.pack(self._last_entry_begin(level - 1, child_begin)))
                h.update(bytes([0, _AuthSubject.AUTH_TREE_DESCENDANT_NODE]))
                expect = h.finalize()
            if not constant_time.bytes_eq(stored, expect):
                raise IntegrityError(f"CocoonFs: auth tree node at level {level} does not match")
        return node
