import { constants } from 'node:fs'
import type { Operations, Stat } from 'fuse-native'
import { errorMessage, toErrno } from '../errors/errors.js'
import type { ImageFs } from '../fs/image-fs.js'
import type { FileStat } from '../fs/types.js'
import type { Logger } from '../log/logger.js'
import type { Metrics } from '../metrics/metrics.js'
import type { Transfers } from '../metrics/transfers.js'

/** Errnos that are answers, not failures: logged at debug only. */
const quiet = new Set([-2, -61])
/** O_ACCMODE, which Node does not export. */
const accessModeMask = 3

/** Logs a failed request (both bindings; the caller counts it); returns its negative errno. */
export function requestFailure(log: Logger): (op: string, path: string, err: unknown) => number {
  return (op, path, err) => {
    const errno = toErrno(err)
    const line = { op, path, errno: -errno, err: errorMessage(err) }
    if (quiet.has(errno)) log.debug(line, 'request failed')
    else log.warn(line, 'request failed')
    return errno
  }
}

/**
 * fuse-native callbacks → ImageFs calls, and results or errors → what
 * fuse-native wants. No file-system logic lives here.
 */
export function fuseOperations(fs: ImageFs, log: Logger, metrics: Metrics, transfers: Transfers): Operations {
  const fail = requestFailure(log)
  /** Runs an operation that yields a value (or nothing) and answers with (0, value) or (errno). */
  const answer = <T>(op: string, path: string, work: () => Promise<T>, done: (err: number, value?: T) => void): void => {
    const answered = metrics.fuseRequest(op)
    work().then(value => { answered(0); done(0, value) }, (err: unknown) => {
      const errno = fail(op, path, err)
      answered(errno)
      done(errno)
    })
  }
  /** Answers a read or write with its byte count (or errno), counting it for metrics and progress. */
  const moved = (op: 'read' | 'write', fd: number, len: number, cb: (result: number) => void) => {
    const answered = metrics.fuseRequest(op, len)
    return (result: number): void => {
      answered(result)
      if (result > 0) transfers.add(fd, result)
      cb(result)
    }
  }
  const refuse = (op: string) => (path: string, ...rest: unknown[]): void => {
    const done = rest.at(-1)
    if (typeof done !== 'function') return
    answer(op, path, async () => fs.refuse(op, path), done as (err: number) => void)
  }

  return {
    getattr: (path, cb) => answer('getattr', path, async () => toStat(await fs.getattr(path)), cb),
    readdir: (path, cb) => answer('readdir', path, async () => fs.readdir(path), cb),
    statfs: (path, cb) => answer('statfs', path, async () => ({ ...await fs.statfs(), files: 0, ffree: 0, favail: 0, fsid: 0, flag: 0 }), cb),
    create: (path, mode, cb) => answer('create', path, async () => {
      const fd = await fs.create(path, mode)
      metrics.uploadStarted()
      transfers.begin(fd, 'upload', path)
      return fd
    }, cb),
    open: (path, flags, cb) => answer('open', path, async () => {
      const fd = await fs.open(path, flags)
      if ((flags & accessModeMask) !== constants.O_RDONLY) {
        metrics.uploadStarted()
        transfers.begin(fd, 'upload', path)
      } else {
        transfers.begin(fd, 'read', path)
        void fs.getattr(path).then(stat => transfers.sized(fd, stat.size), () => undefined)
      }
      return fd
    }, cb),
    read: (path, fd, buf, len, pos, cb) => {
      const reply = moved('read', fd, len, cb)
      try {
        const result = fs.read(fd, buf, len, pos)
        if (typeof result === 'number') reply(result)
        else result.then(reply, (err: unknown) => reply(fail('read', path, err)))
      } catch (err) {
        reply(fail('read', path, err))
      }
    },
    write: (path, fd, buf, len, pos, cb) => {
      const reply = moved('write', fd, len, cb)
      fs.write(fd, buf, len, pos).then(reply, (err: unknown) => reply(fail('write', path, err)))
    },
    flush: (path, fd, cb) => answer('flush', path, async () => fs.flush(fd), cb),
    fsync: (path, _datasync, fd, cb) => answer('fsync', path, async () => fs.fsync(fd), cb),
    release: (path, fd, cb) => answer('release', path, async () => {
      transfers.end(fd)
      await fs.release(fd)
    }, cb),
    truncate: (path, size, cb) => answer('truncate', path, async () => fs.truncate(path, size), cb),
    ftruncate: (path, fd, size, cb) => answer('ftruncate', path, async () => fs.ftruncate(fd, size), cb),
    utimens: (path, _atime, mtime, cb) => answer('utimens', path, async () => fs.utimens(path, mtime), cb),
    chmod: (path, mode, cb) => answer('chmod', path, async () => fs.chmod(path, mode), cb),
    chown: (path, uid, gid, cb) => answer('chown', path, async () => fs.chown(path, uid, gid), cb),
    unlink: (path, cb) => answer('unlink', path, async () => fs.unlink(path), cb),
    rename: (src, dest, cb) => answer('rename', src, async () => fs.rename(src, dest), cb),
    getxattr: (path, name, _position, cb) => answer('getxattr', path, async () => fs.getxattr(path, name), cb),
    listxattr: (path, cb) => answer('listxattr', path, async () => fs.listxattr(path), cb),
    setxattr: (path, name, value, _position, _flags, cb) => answer('setxattr', path, async () => fs.setxattr(path, name, value), cb),
    mkdir: refuse('mkdir'),
    symlink: refuse('symlink'),
    link: refuse('link'),
    mknod: refuse('mknod'),
    rmdir: (path, cb) => answer('rmdir', path, async () => fs.rmdir(path), cb),
  }
}

function toStat(s: FileStat): Stat {
  const time = new Date(s.mtimeMs)
  return { mode: s.mode, uid: s.uid, gid: s.gid, size: s.size, nlink: s.nlink, blocks: s.blocks, blksize: s.blksize, atime: time, mtime: time, ctime: time }
}
