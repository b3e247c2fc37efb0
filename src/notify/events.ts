// The events pullcache tells webhooks about, in the envelope distribution's notifications use
// (application/vnd.docker.distribution.events.v1+json), so a receiver written for a registry's
// events (GitLab's, a Harbor-style listener, a small script) reads pullcache's as they are:
//
//   {"events": [{
//     "id": "…uuid…", "timestamp": "2026-12-02T01:00:00.000Z", "action": "pull",
//     "target": {"mediaType": "…", "digest": "sha256:…", "size": 1234, "length": 1234,
//                "repository": "library/alpine", "url": "/v2/alpine/manifests/3.20",
//                "tag": "3.20", "cache": "hit"},
//     "request": {"id": "…", "addr": "10.0.0.7:51234", "host": "mirror:5000",
//                 "method": "GET", "useragent": "containerd/2.0"},
//     "actor": {"name": "ci"},                       (no name: anonymous)
//     "source": {"addr": "mirror-1:5000", "instanceID": "…uuid…"}}]}
//
// v1 rather than distribution 3's v2: v2 only drops fields we do not send, and v1 is the type
// the receivers in use check for. pullcache's own actions (fill, evict) and target fields
// (cache, reason, digests, bytes) are additions a v1 reader ignores.

import { randomUUID } from 'node:crypto'

export const EVENTS_MEDIA_TYPE = 'application/vnd.docker.distribution.events.v1+json'

export type NotifyAction = 'pull' | 'fill' | 'evict'

export interface EventTarget {
  mediaType?: string
  digest?: string
  /** The whole object's size. */
  size?: number
  /** The bytes this response sent (a range asks for part). */
  length?: number
  repository?: string
  url?: string
  tag?: string
  /** How pullcache answered: hit, miss, stale or coalesced. */
  cache?: string
  /** evict: what was removed, its bytes on disk and why (size: the budget; age: unused). */
  digests?: string[]
  count?: number
  bytes?: number
  reason?: string
}

export interface RequestRecord {
  id: string
  addr: string
  host: string
  method: string
  useragent: string
}

export interface SourceRecord {
  addr: string
  instanceID: string
}

export interface NotifyEvent {
  id: string
  timestamp: string
  action: NotifyAction
  target: EventTarget
  request?: RequestRecord
  /** The account that signed in; no name for an anonymous client. */
  actor?: { name?: string }
  source: SourceRecord
}

/** An event as the routes and the store describe it; id, time and source are added here. */
export type EventInput = Pick<NotifyEvent, 'action' | 'target' | 'request' | 'actor'>

export function makeEvent(input: EventInput, source: SourceRecord, now = new Date()): NotifyEvent {
  return {
    id: randomUUID(),
    timestamp: now.toISOString(),
    action: input.action,
    target: input.target,
    ...(input.request === undefined ? {} : { request: input.request }),
    ...(input.actor === undefined ? {} : { actor: input.actor }),
    source,
  }
}

/** Which events an endpoint wants (its `events` and `ignore`). */
export interface EventFilter {
  events: readonly NotifyAction[]
  ignore: { media_types: readonly string[]; actions: readonly NotifyAction[] }
}

export function wanted(filter: EventFilter, event: NotifyEvent): boolean {
  if (!filter.events.includes(event.action)) return false
  if (filter.ignore.actions.includes(event.action)) return false
  const type = event.target.mediaType
  return type === undefined || !filter.ignore.media_types.includes(type)
}

/** A blob committed to the store: a fill, for the repository whose pull fetched it. */
export function fillEvent(blob: { digest: string; size: number; repo: string }): EventInput {
  return {
    action: 'fill',
    target: {
      mediaType: 'application/octet-stream',
      digest: blob.digest,
      size: blob.size,
      repository: blob.repo,
    },
  }
}

/** A page of blobs eviction took out: one event per reason, with their digests and bytes. */
export function evictEvents(
  blobs: readonly { digest: string; size: number; allocated: number; reason: string }[],
): EventInput[] {
  const byReason = new Map<string, Required<Pick<EventTarget, 'digests' | 'count' | 'size' | 'bytes'>>>()
  for (const blob of blobs) {
    let group = byReason.get(blob.reason)
    if (group === undefined) {
      group = { digests: [], count: 0, size: 0, bytes: 0 }
      byReason.set(blob.reason, group)
    }
    group.digests.push(blob.digest)
    group.count++
    group.size += blob.size
    group.bytes += blob.allocated
  }
  return [...byReason].map(([reason, group]) => ({ action: 'evict', target: { ...group, reason } }))
}
