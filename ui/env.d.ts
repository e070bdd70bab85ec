// The dashboard's build-time module kinds: esbuild bundles imported CSS into app.css.
declare module '*.css';
