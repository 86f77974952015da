// A form made from a JSON schema (the job spec's, from the API's own /openapi.json): one field per property,
// nested objects as nested fieldsets, each field with its description and default. Only what the user set is sent:
// the API fills in every default itself, so the form never has to know them.

import {h} from './dom.js';

export function deref(schema, root) {
  let s = schema || {};
  for (let i = 0; s.$ref && i < 20; i++) {
    const path = s.$ref.replace(/^#\//, '').split('/');
    const {$ref, ...rest} = s;
    s = {...path.reduce((node, part) => node?.[part], root), ...rest};
  }
  return s;
}

function variantsOf(schema, root) {
  const s = deref(schema, root);
  const list = (s.anyOf || s.oneOf || [s]).map((v) => deref(v, root));
  return {schema: s, nullable: list.some((v) => v.type === 'null'), kinds: list.filter((v) => v.type !== 'null')};
}

function defaultText(value) {
  if (value === undefined) return null;
  return typeof value === 'string' ? value : JSON.stringify(value);
}

function parseLoose(text, kinds) {
  const t = text.trim();
  if (t === '') return undefined;
  const types = new Set(kinds.map((k) => k.const !== undefined ? 'const' : k.type));
  if ((types.has('integer') || types.has('number')) && /^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$/i.test(t)) return Number(t);
  if (types.has('boolean') && (t === 'true' || t === 'false')) return t === 'true';
  if (types.has('array') && t.startsWith('[')) return JSON.parse(t);
  if (types.has('array') && !types.has('string')) return t.split(',').map((x) => x.trim()).filter(Boolean);
  return t;
}

/**
 * Build the form for an object schema. Returns {element, collect, fields}: collect() gives the object of the values
 * the user set (nested), `fields` maps each dotted path to its {element, input, setError, setValue}.
 */
export function schemaForm(schema, root, {hints = {}} = {}) {
  const fields = new Map();

  function objectFields(objSchema, path) {
    const s = deref(objSchema, root);
    const required = new Set(s.required || []);
    const parts = [];
    const collectors = [];
    for (const [name, propSchema] of Object.entries(s.properties || {})) {
      const fieldPath = path ? `${path}.${name}` : name;
      const {schema: ps, nullable, kinds} = variantsOf(propSchema, root);
      const description = ps.description || kinds[0]?.description || '';
      const dflt = ps.default !== undefined ? ps.default : kinds[0]?.default;
      if (kinds.length === 1 && kinds[0].properties) {
        const inner = objectFields(kinds[0], fieldPath);
        const details = h('details', {class: 'nested', open: !nullable, dataset: {path: fieldPath}},
          h('summary', {}, name, nullable ? h('span', {class: 'meta'}, ' optional: sent only when a field is set') : null),
          description ? h('p', {class: 'description'}, description) : null, inner.element);
        parts.push(details);
        collectors.push([name, inner.collect]);
        continue;
      }
      const field = leafField(fieldPath, name, kinds, {description, dflt, required: required.has(name), nullable,
                                                      hint: hints[fieldPath]});
      fields.set(fieldPath, field);
      parts.push(field.element);
      collectors.push([name, field.collect]);
    }
    return {
      element: h('div', {class: 'fields'}, parts),
      collect() {
        const out = {};
        for (const [name, collect] of collectors) {
          const value = collect();
          if (value !== undefined) out[name] = value;
        }
        return Object.keys(out).length ? out : undefined;
      },
    };
  }

  function leafField(path, name, kinds, {description, dflt, required, hint}) {
    const id = `field-${path.replace(/[^a-zA-Z0-9_-]/g, '-')}`;
    const only = kinds.length === 1 ? kinds[0] : null;
    let input;
    let collect;
    const shownDefault = defaultText(dflt);
    if (only && only.enum) {
      input = h('select', {id, name: path},
        h('option', {value: ''}, shownDefault !== null ? `default (${shownDefault})` : '—'),
        only.enum.map((v) => h('option', {value: v}, v)));
      collect = () => (input.value === '' ? undefined : input.value);
    } else if (only && only.type === 'boolean') {
      input = h('input', {id, name: path, type: 'checkbox', checked: dflt === true});
      collect = () => (input.checked === (dflt === true) ? undefined : input.checked);
    } else if (only && (only.type === 'integer' || only.type === 'number')) {
      input = h('input', {id, name: path, type: 'number', step: only.type === 'integer' ? '1' : 'any',
                          min: only.minimum ?? only.exclusiveMinimum, max: only.maximum ?? only.exclusiveMaximum,
                          placeholder: shownDefault ?? ''});
      collect = () => (input.value === '' ? undefined : Number(input.value));
    } else if (only && only.type === 'object') {
      input = h('textarea', {id, name: path, rows: 2, placeholder: '{"key": "value"}'});
      collect = () => (input.value.trim() === '' ? undefined : JSON.parse(input.value));
    } else if (only && only.type === 'array') {
      input = h('input', {id, name: path, placeholder: 'comma-separated'});
      collect = () => parseLoose(input.value, kinds);
    } else {
      input = h('input', {id, name: path, placeholder: shownDefault ?? '', required: required || null,
                          list: hint || null, autocomplete: 'off'});
      collect = () => parseLoose(input.value, kinds);
    }
    const error = h('div', {class: 'field-error', role: 'alert', hidden: true});
    const types = kinds.map((k) => (k.const !== undefined ? JSON.stringify(k.const) : k.enum ? 'choice' : k.type)).join(' | ');
    const element = h('div', {class: `field ${required ? 'required' : ''}`, dataset: {path}},
      h('label', {for: id}, name, required ? h('span', {class: 'req', title: 'required'}, ' *') : null),
      input,
      h('div', {class: 'description'}, description,
        h('span', {class: 'meta'}, ` ${types}`, shownDefault !== null ? ` · default ${shownDefault}` : '')),
      error);
    return {
      element, input,
      collect,
      setValue(value) {
        if (input.type === 'checkbox') input.checked = Boolean(value);
        else input.value = value;
      },
      setError(text) {
        error.hidden = !text;
        error.textContent = text || '';
        element.classList.toggle('invalid', Boolean(text));
      },
    };
  }

  const top = objectFields(schema, '');
  return {element: top.element, collect: () => top.collect() || {}, fields};
}
