import t from 'tap'
import { checkFileName, fileNameFromPath, fileNameOf, isUuid, volumeNameOf } from '../../src/store/names.js'

t.test('names map to volume names and back', async t => {
  t.equal(volumeNameOf('cirros.img'), 'image-cirros.img')
  t.equal(fileNameOf('image-cirros.img'), 'cirros.img')
  t.equal(fileNameOf('volume-1'), undefined)
  t.equal(fileNameFromPath('/a'), 'a')
  t.throws(() => fileNameFromPath('/a/b'), { code: 'ENOENT' }, 'there are no subdirectories')
  t.ok(isUuid('8A1F3C1E-0b7e-4a4c-9d7d-3f1c2b6a9e10'))
  t.notOk(isUuid('8a1f3c1e-0b7e-4a4c-9d7d-3f1c2b6a9e1'))
})

t.test('names a volume cannot carry are refused with the errno a shell user expects', async t => {
  t.throws(() => checkFileName('x'.repeat(256)), { code: 'ENAMETOOLONG' }, '256 bytes')
  t.throws(() => checkFileName('é'.repeat(128)), { code: 'ENAMETOOLONG' }, '256 bytes in 128 characters')
  t.throws(() => checkFileName('y'.repeat(250)), { code: 'ENAMETOOLONG' }, 'image-<250 chars> passes Cinder\'s 255')
  t.doesNotThrow(() => checkFileName('y'.repeat(249)), '249 characters fit')
  t.throws(() => checkFileName('bad\uFFFDname'), { code: 'EINVAL' }, 'invalid UTF-8 (replacement character)')
  t.throws(() => checkFileName('..'), { code: 'EINVAL' })
})
