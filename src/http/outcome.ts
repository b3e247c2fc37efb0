// What a response served, as the routes learned it: the access log reads it when the response
// is over.

import type { ServerResponse } from 'node:http'

export const CACHE_HEADER = 'X-Pullcache-Cache'

/** What the access log needs to know about a response that Hono did not write itself. */
export interface ResponseNote {
  cache?: string
  bytes?: () => number
  /** The account that signed in; never its password. */
  user?: string
}
export const responseNotes = new WeakMap<ServerResponse, ResponseNote>()
