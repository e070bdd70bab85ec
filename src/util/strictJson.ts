// JSON.parse that also refuses an object with a repeated key, as strict log pipelines do (etd's log lines must pass it).

/** Parses `text` as JSON; throws SyntaxError on invalid JSON or on a key repeated within one object. */
export function parseStrictJson(text: string): unknown {
  const value: unknown = JSON.parse(text);
  // Valid JSON from here: a scan of the structure only needs to find keys in objects.
  const stack: Array<{ keys: Set<string>; object: boolean; wantKey: boolean }> = [];
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      let j = i + 1;
      while (text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      const top = stack[stack.length - 1];
      if (top?.object && top.wantKey) {
        const key = JSON.parse(text.slice(i, j + 1)) as string;
        if (top.keys.has(key)) throw new SyntaxError(`duplicate key "${key}" in ${text.length > 200 ? `${text.slice(0, 200)}…` : text}`);
        top.keys.add(key);
        top.wantKey = false;
      }
      i = j;
    } else if (c === '{' || c === '[') {
      stack.push({ keys: new Set(), object: c === '{', wantKey: c === '{' });
    } else if (c === '}' || c === ']') {
      stack.pop();
    } else if (c === ',') {
      const top = stack[stack.length - 1];
      if (top?.object) top.wantKey = true;
    }
  }
  return value;
}
