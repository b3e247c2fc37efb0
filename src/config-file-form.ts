// Back to the file's shape. `config check` prints the effective config as a file `--config`
// reads back unchanged. Plain values (strings, numbers, booleans, enums, null, arrays, objects)
// are written as they are; each schema that transforms its text (durations, sizes, listen,
// patterns) says how its value is written back, right where it is defined (config-schema.ts).
// toFileForm() walks the schema, so a new key or section is printed with no change here, and a
// new transform without a file form is an error, which the round-trip test
// (test/unit/config-file-form.test.ts) reports. Secrets are marked here too: never printed.

import type { z } from 'zod'

/** Schemas whose parsed value is not what the file holds -> how to write the value back. */
const FILE_FORMS = new WeakMap<z.ZodType, (value: never) => unknown>()
/** Schemas of secrets: never printed; the file form leaves the key out. */
const SECRETS = new WeakSet<z.ZodType>()

export function writtenAs<S extends z.ZodType>(schema: S, toFile: (value: z.output<S>) => unknown): S {
  FILE_FORMS.set(formKey(schema), toFile as (value: never) => unknown)
  return schema
}

/**
 * What a file form is registered under: for a transform (a pipe), the transform step itself,
 * which zod keeps when it copies the pipe (`.refine()` on a duration makes a new schema with
 * the same transform), so the copies are written back as the original is.
 */
function formKey(schema: z.ZodType): z.ZodType {
  const def = defOf(schema)
  return def.type === 'pipe' && def.out !== undefined ? def.out : schema
}

/**
 * Marks a key's schema as a secret: `config check` and fileForm() leave it out. Secrets belong
 * in the environment or a file named in the config (as upstream.password_file), so this is for
 * a key that cannot be otherwise; it must be optional or have a default, so that what is
 * printed still loads.
 */
export function secret<S extends z.ZodType>(schema: S): S {
  SECRETS.add(schema)
  return schema
}

/** The parts of zod's schema definitions fileForm() reads. */
interface SchemaDef {
  type: string
  innerType?: z.ZodType
  element?: z.ZodType
  out?: z.ZodType
  shape?: Record<string, z.ZodType>
}

function defOf(schema: z.ZodType): SchemaDef {
  return schema._zod.def as unknown as SchemaDef
}

/** Whether a key's schema, or a schema it wraps (default, nullable...), is a secret. */
function isSecret(schema: z.ZodType): boolean {
  for (let node: z.ZodType | undefined = schema; node; node = defOf(node).innerType) {
    if (SECRETS.has(node)) return true
  }
  return false
}

/** `value`, parsed by `schema`, as the file that parses to it; secrets left out. */
export function toFileForm(schema: z.ZodType, value: unknown): unknown {
  return toFile(schema, value, '')
}

function toFile(schema: z.ZodType, value: unknown, path: string): unknown {
  const format = FILE_FORMS.get(formKey(schema))
  if (format) return format(value as never)
  const def = defOf(schema)
  switch (def.type) {
    case 'string':
    case 'number':
    case 'boolean':
    case 'enum':
    case 'literal':
    case 'null':
      return value
    case 'nullable':
      return value === null ? null : toFile(def.innerType!, value, path)
    case 'optional':
      return value === undefined ? undefined : toFile(def.innerType!, value, path)
    case 'default':
    case 'prefault':
    case 'readonly':
      return toFile(def.innerType!, value, path)
    case 'array':
      return (value as unknown[]).map((item, i) => toFile(def.element!, item, `${path}.${i}`))
    case 'object': {
      const out: Record<string, unknown> = {}
      const from = value as Record<string, unknown>
      for (const [key, child] of Object.entries(def.shape!)) {
        if (isSecret(child)) continue
        const written = toFile(child, from[key], path === '' ? key : `${path}.${key}`)
        if (written !== undefined) out[key] = written
      }
      return out
    }
    default:
      throw new Error(`${path || '(top level)'}: no file form for a ${def.type} schema`)
  }
}
