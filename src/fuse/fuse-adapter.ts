import type { Operations, Stat } from 'fuse-native'
import { errorMessage, toErrno } from '../errors/errors.js'
import type { ImageFs } from '../fs/image-fs.js'
import type { FileStat } from '../fs/types.js'
import type { Logger } from '../log/logger.js'
import type { Metrics } from '../metrics/metrics.js'

/** Errnos that are answers, not failures: logged at debug only. */
const quiet = new Set([-2, -61])

/** Counts and logs a failed request (both bindings); returns its negative errno. */
export function requestFailure(log: Logger, metrics: Metrics): (op: string, path: string, err: unknown) => number {
  return (op, path, err) => {
    const errno = toErrno(err)
    metrics.error(op, errno)
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
export function fuseOperations(fs: ImageFs, log: Logger, metrics: Metrics): Operations {
  const fail = requestFailure(log, metrics)
  /** Runs an operation that yields a value (or nothing) and answers with (0, value) or (errno). */
  const answer = <T>(op: string, path: string, work: () => Promise<T>, done: (err: number, value?: T) => void): void => {
    metrics.op(op)
    work().then(value => done(0, value), (err: unknown) => done(fail(op, path, err)))
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
    create: (path, mode, cb) => answer('create', path, async () => fs.create(path, mode), cb),
    open: (path, flags, cb) => answer('open', path, async () => fs.open(path, flags), cb),
    read: (path, fd, buf, len, pos, cb) => {
      metrics.request('read', len)
      try {
        const result = fs.read(fd, buf, len, pos)
        if (typeof result === 'number') cb(result)
        else result.then(cb, (err: unknown) => cb(fail('read', path, err)))
      } catch (err) {
        cb(fail('read', path, err))
      }
    },
    write: (path, fd, buf, len, pos, cb) => {
      metrics.request('write', len)
      fs.write(fd, buf, len, pos).then(cb, (err: unknown) => cb(fail('write', path, err)))
    },
    flush: (path, fd, cb) => answer('flush', path, async () => fs.flush(fd), cb),
    fsync: (path, _datasync, fd, cb) => answer('fsync', path, async () => fs.fsync(fd), cb),
    release: (path, fd, cb) => answer('release', path, async () => fs.release(fd), cb),
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
