/**
 * protobufjs reads a 32-bit varint (int32, uint32, sint32, enum, and every
 * tag and length) by taking five bytes and, if the fifth still says "more",
 * skipping exactly five more: right only for the 10-byte form of a negative
 * int32. A varint of 6 to 9 bytes is valid protobuf (an int64 written by a
 * peer and read as int32 is truncated to its low 32 bits; encoders may pad),
 * and was misread as whatever bytes followed, so such a request failed to
 * decode. This reader consumes the varint to its real end, at most 10 bytes,
 * and keeps the low 32 bits, as the protobuf encoding spec says.
 */
import protobuf from 'protobufjs';

/** The methods of protobufjs's Reader this replaces; `buf`, `pos` and `len` are its public fields. */
interface VarintReader {
  buf: Uint8Array;
  pos: number;
  len: number;
}

const MAX_VARINT_BYTES = 10;

function readUint32(this: VarintReader): number {
  let value = 0;
  for (let i = 0; i < MAX_VARINT_BYTES; i++) {
    if (this.pos >= this.len) throw new RangeError(`index out of range: ${this.pos} + 1 > ${this.len}`);
    const byte = this.buf[this.pos++]!;
    // Bits past the 32nd are dropped: (byte << 28) keeps the low four bits of the fifth byte.
    if (i < 5) value = (value | ((byte & 0x7f) << (7 * i))) >>> 0;
    if (byte < 0x80) return value;
  }
  throw new Error(`invalid varint encoding at offset ${this.pos - MAX_VARINT_BYTES}: more than ${MAX_VARINT_BYTES} bytes`);
}

let installed = false;

/** Replaces Reader.prototype.uint32 (int32 and sint32 call it) for the process. */
export function readVarintsWhole(): void {
  if (installed) return;
  installed = true;
  (protobuf.Reader.prototype as unknown as { uint32: () => number }).uint32 = readUint32;
}
