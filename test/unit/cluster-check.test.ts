// `pullcache cluster check` holds every node to one place for blobs: one bucket and prefix.
import { describe, expect, test } from 'vitest'
import { differentPlaces } from '../../src/cli/cluster.js'

const on = (bucket: string, prefix = '') => ({
  bucket: { endpoint: 'http://s3.lan:9000', bucket, prefix, capabilities: null },
})

describe('cluster check: where the nodes keep blobs', () => {
  test('nodes on one bucket and prefix, or all on local disks, agree', () => {
    expect(differentPlaces([on('blobs', 'a/'), on('blobs', 'a/'), on('blobs', 'a/')])).toBeUndefined()
    expect(differentPlaces([{}, {}])).toBeUndefined()
  })

  test('another bucket, another prefix, or a node on its local disk is named', () => {
    expect(differentPlaces([on('blobs'), on('other')])).toBe(
      'the nodes keep blobs in different places: bucket blobs/, bucket other/',
    )
    expect(differentPlaces([on('blobs', 'a/'), on('blobs', 'b/')])).toContain(
      'bucket blobs/a/, bucket blobs/b/',
    )
    expect(differentPlaces([on('blobs'), {}])).toBe(
      'the nodes keep blobs in different places: bucket blobs/, local storage',
    )
  })
})
