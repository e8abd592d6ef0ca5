// Types for the parts of fuse-native 2.2.6 that cinderfs uses (the package ships none).
declare module 'fuse-native' {
  export interface Stat {
    mode: number
    uid: number
    gid: number
    size: number
    dev?: number
    nlink: number
    ino?: number
    rdev?: number
    blksize?: number
    blocks?: number
    atime: Date | number
    mtime: Date | number
    ctime: Date | number
  }

  export interface StatFs {
    bsize: number
    frsize: number
    blocks: number
    bfree: number
    bavail: number
    files: number
    ffree: number
    favail: number
    fsid: number
    flag: number
    namemax: number
  }

  type Done = (err: number) => void
  type DoneWith<T> = (err: number, value?: T) => void

  export interface Operations {
    init?(cb: Done): void
    statfs?(path: string, cb: DoneWith<StatFs>): void
    getattr?(path: string, cb: DoneWith<Stat>): void
    fgetattr?(path: string, fd: number, cb: DoneWith<Stat>): void
    readdir?(path: string, cb: (err: number, names?: string[], stats?: Stat[]) => void): void
    open?(path: string, flags: number, cb: DoneWith<number>): void
    create?(path: string, mode: number, cb: DoneWith<number>): void
    read?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (bytesOrErr: number) => void): void
    write?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (bytesOrErr: number) => void): void
    flush?(path: string, fd: number, cb: Done): void
    fsync?(path: string, datasync: number, fd: number, cb: Done): void
    release?(path: string, fd: number, cb: Done): void
    truncate?(path: string, size: number, cb: Done): void
    ftruncate?(path: string, fd: number, size: number, cb: Done): void
    utimens?(path: string, atime: number, mtime: number, cb: Done): void
    chmod?(path: string, mode: number, cb: Done): void
    chown?(path: string, uid: number, gid: number, cb: Done): void
    unlink?(path: string, cb: Done): void
    rename?(src: string, dest: string, cb: Done): void
    link?(src: string, dest: string, cb: Done): void
    symlink?(src: string, dest: string, cb: Done): void
    mkdir?(path: string, mode: number, cb: Done): void
    rmdir?(path: string, cb: Done): void
    mknod?(path: string, mode: number, dev: number, cb: Done): void
    setxattr?(path: string, name: string, value: Buffer, position: number, flags: number, cb: Done): void
    getxattr?(path: string, name: string, position: number, cb: (err: number, value?: Buffer | null) => void): void
    listxattr?(path: string, cb: (err: number, names?: string[]) => void): void
    removexattr?(path: string, name: string, cb: Done): void
  }

  export interface Options {
    timeout?: number | false
    force?: boolean
    mkdir?: boolean
    debug?: boolean
    allowOther?: boolean
    autoUnmount?: boolean
    defaultPermissions?: boolean
    maxRead?: number
    fsname?: string
    subtype?: string
    kernelCache?: boolean
    entryTimeout?: number
    attrTimeout?: number
  }

  export default class Fuse {
    constructor(mnt: string, ops: Operations, opts?: Options)
    mount(cb: (err: Error | null) => void): void
    unmount(cb: (err: Error | null) => void): void
    static unmount(mnt: string, cb: (err: Error | null) => void): void
  }
}

declare module 'node-gyp-build' {
  function load(dir: string): unknown
  namespace load {
    function path(dir: string): string
  }
  export = load
}
