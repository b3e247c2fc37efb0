// Buffers of one size kept for reuse. On the blob paths a fresh buffer per chunk costs twice:
// V8's collector runs major GCs to free them (their memory lives outside its heap), and glibc
// gives the freed pages back to the kernel, so the next ones fault in again (a page fault per
// 4 KiB, the dearest thing on a VM). A buffer from here is allocated once and lives on.
//
// The one rule for users: give a buffer back only when nothing will read or write it any more
// (a write that still holds it, a reader that may still copy from it).

export class BufferPool {
  readonly size: number
  private readonly keep: number
  private readonly free: Buffer[] = []

  /** Buffers of `size` bytes; at most `keep` are held while unused, more go to the collector. */
  constructor(size: number, keep: number) {
    this.size = size
    this.keep = keep
  }

  take(): Buffer {
    return this.free.pop() ?? Buffer.allocUnsafeSlow(this.size)
  }

  give(buffer: Buffer): void {
    if (buffer.length === this.size && this.free.length < this.keep) this.free.push(buffer)
  }
}
