import t from 'tap'
import { CinderfsError, toErrno } from '../../src/errors/errors.js'

t.test('typed errors map to their errno', async t => {
  t.equal(toErrno(new CinderfsError('ENOENT', 'no such image')), -2)
  t.equal(toErrno(new CinderfsError('EROFS', 'image is finalised')), -30)
  t.equal(toErrno(new CinderfsError('EDQUOT', 'quota')), -122)
})

t.test('node system errors keep their errno; anything else is EIO', async t => {
  const enospc = Object.assign(new Error('write failed'), { code: 'ENOSPC' })
  t.equal(toErrno(enospc), -28)
  t.equal(toErrno(new Error('boom')), -5)
  t.equal(toErrno('a string'), -5)
})
