function a(e,n={},...t){let s=document.createElement(e);for(let[r,o]of Object.entries(n))o===void 0||o===!1||(r==="class"?s.className=String(o):s.setAttribute(r,o===!0?"":String(o)));for(let r of t)s.append(typeof r=="string"?document.createTextNode(r):r);return s}function l(e,n){e.textContent=n}function E(e){for(;e.firstChild;)e.removeChild(e.firstChild)}function g(e,n,t=""){return a("button",{class:"cv-button","data-role":n,title:t,type:"button"},e)}function v(e,n,t,s){let r=a("select",{class:"cv-select","data-role":e});for(let o of n)r.append(a("option",{value:o},s?.[o]??o));return r.value=t,r}function c(e,n=4){if(e==null||!Number.isFinite(e))return"\u2013";let t=Math.abs(e);return t!==0&&(t<.001||t>=1e5)?e.toExponential(2):e.toFixed(n).replace(/\.?0+$/,"")||"0"}var $=`
.cv-root{font:12px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;color:#222;background:#fff;position:relative;padding:4px}
.cv-toolbar{display:flex;flex-wrap:wrap;gap:6px;align-items:center;margin:4px 0}
.cv-title{font-weight:600;margin-right:8px}
.cv-button,.cv-select{font:inherit;padding:2px 8px;border:1px solid #bbb;border-radius:4px;background:#fafafa;cursor:pointer}
.cv-button:hover{background:#eee}
.cv-tooltip{position:absolute;pointer-events:none;background:rgba(20,20,20,.92);color:#fff;padding:4px 6px;border-radius:4px;white-space:pre-wrap;z-index:10;display:none;font-size:11px;width:max-content;max-width:420px;overflow:hidden}
.cv-error{color:#a40000;background:#fff0f0;border:1px solid #f3b0b0;border-radius:4px;padding:4px 6px;margin:4px 0;white-space:pre-wrap}
.cv-error:empty{display:none}
.cv-hm{position:relative;display:inline-block;user-select:none}
.cv-hm canvas{display:block}
.cv-hm-plot{position:relative}
.cv-hm-head{display:flex;flex-wrap:wrap;gap:4px 8px;align-items:center;margin-bottom:2px}
.cv-hm-title{font-weight:600;overflow-wrap:anywhere;flex:1 1 100%}
.cv-hm-head .cv-button{padding:0 6px}
.cv-hm-head .cv-button:disabled{opacity:.45;cursor:default}
.cv-hits{position:absolute;left:0;top:0}
.cv-hit{position:absolute;cursor:pointer;background:transparent}
.cv-hit:focus-visible,.cv-node:focus-visible{outline:2px solid #0072B2;outline-offset:1px}
.cv-panel{min-width:220px;max-width:360px;border-left:1px solid #ddd;padding-left:10px}
.cv-panel table{border-collapse:collapse}
.cv-panel td{padding:1px 6px 1px 0}
.cv-row{display:flex;gap:12px;align-items:flex-start;flex-wrap:wrap}
.cv-busy{color:#666;font-style:italic;visibility:hidden}
.cv-root[data-busy="true"] .cv-busy{visibility:visible}
.cv-root[data-busy="true"] .cv-main{opacity:.7}
.cv-tokens{white-space:pre-wrap;line-height:1.9;max-height:260px;overflow:auto;border:1px solid #eee;padding:4px;font-family:ui-monospace,Menlo,monospace}
.cv-token{padding:1px 0;box-shadow:inset -1px 0 #e4e4e4;border-bottom:3px solid transparent;cursor:default}
.cv-token[data-focus="true"]{outline:2px solid #333}
.cv-muted{color:#777}
.cv-topk td:last-child{text-align:right;font-variant-numeric:tabular-nums}
.cv-topk-wrap{display:flex;gap:14px;align-items:flex-start;margin-top:4px}
.cv-notice{background:#f4f7fb;border:1px solid #c9d6e6;border-radius:4px;padding:4px 6px;margin:4px 0}
.cv-per-prompt{margin-top:6px;max-height:240px;overflow:auto}
.cv-per-prompt td{text-align:right;font-variant-numeric:tabular-nums}
`;function M(e,n){E(e);let t=document.createElement("style");t.textContent=$;let s=a("div",{class:`cv-root cv-${n}`,"data-view":n,"data-busy":"false"});return e.append(t,s),s}var j=["submitted","queued","running"];var C=8*2**-23;function k(e,n){let t=e.state??"",s=!!e.remote&&j.includes(t)&&n!==null&&e.request===n;if(!e.remote||!t)return{text:"",cancellable:s};let r=e.seconds===null||e.seconds===void 0?"":` (${c(e.seconds,3)} s)`,o=t==="error"&&e.detail?`: ${e.detail}`:"";return{text:`NDIF job: ${t}${r}${o}`,cancellable:s}}var f=class{constructor(n,t){this.model=n;this.slot=t;this.state=a("span",{"data-role":`${t}-job-state`}),this.latency=a("span",{class:"cv-muted","data-role":`${t}-latency`}),this.cancel=g("Cancel",`${t}-cancel`,"Stop waiting for this NDIF job (the view stays as it was)"),this.cancel.hidden=!0,this.cancel.addEventListener("click",()=>{this.cancel.disabled=!0,l(this.state,"cancelling\u2026"),this.model.send({type:"cancel_job",job:this.slot})}),this.el=a("div",{class:"cv-job","data-role":`${t}-job`,"data-state":""},this.state," ",this.cancel," ",this.latency),n.on(`change:${t}_job`,()=>this.draw()),this.draw()}draw(){let n=this.model.get(`${this.slot}_job`)??{},{text:t,cancellable:s}=k(n,n.request??null);this.el.dataset.state=n.state??"",this.el.hidden=!n.remote,this.cancel.hidden=!s,s||(this.cancel.disabled=!1),l(this.state,t);let r=n.remote&&n.state==="done"&&typeof n.seconds=="number";r?this.latency.dataset.ms=String(Math.round(n.seconds*1e3)):delete this.latency.dataset.ms,l(this.latency,r?`request \u2192 result in ${c(n.seconds,3)} s`:"")}};var R={add:"add coef \xD7 direction",ablate:"ablate direction (every layer)"},q=`
.cv-steer-side{flex:1 1 260px;border:1px solid #ddd;border-radius:4px;padding:6px;min-width:220px}
.cv-steer-side h4{margin:0 0 4px;font-size:12px}
.cv-steer-text{white-space:pre-wrap;font-family:ui-monospace,Menlo,monospace;min-height:2.8em}
.cv-steer-badge{display:inline-block;border-radius:3px;padding:0 5px;font-size:11px;margin-right:6px}
.cv-steer-badge[data-refused="true"]{background:#fde2d8;color:#8a2a0a}
.cv-steer-badge[data-refused="false"]{background:#dff0e4;color:#1d5a2f}
.cv-steer-prompt{font:inherit;width:520px;max-width:80vw;padding:2px 4px}
.cv-steer-label{display:flex;gap:6px;align-items:center}
`;function L(e,n){let t=a("span",{class:"cv-steer-badge","data-role":`${n}-verdict`}),s=a("span",{class:"cv-muted","data-role":`${n}-score`}),r=a("div",{class:"cv-steer-text","data-role":n});return{box:a("div",{class:"cv-steer-side"},a("h4",{},e),a("div",{},t,s),r),show(i){let d="text"in i;l(r,d?i.text||"(empty continuation)":"\u2026"),t.setAttribute("data-refused",d?String(i.refused):""),l(t,d?i.refused?"refuses":"complies":""),t.title="refuses: the continuation starts with a refusal phrase (circuitviz.engine.REFUSAL_PHRASES)",l(s,d?`refusal score ${c(i.score,2)}`:""),s.title="Log-odds that the first generated token starts a refusal (I, Sorry, Unfortunately, As)"}}}function J({model:e,el:n}){let t=M(n,"steering"),s=document.createElement("style");s.textContent=q;let r=a("input",{class:"cv-steer-prompt","data-role":"prompt",type:"text",maxlength:256}),o=v("mode",["add","ablate"],e.get("mode"),R),i=a("input",{type:"range","data-role":"coef",step:.1}),d=a("span",{"data-role":"coef-value"}),A=a("span",{class:"cv-busy"},"generating\u2026"),H=new f(e,"generate"),x=a("div",{class:"cv-error","data-role":"error",role:"alert"}),y=a("div",{class:"cv-muted","data-role":"standalone-notice"}),w=L("Before (no intervention)","before"),m=L("After","after"),_=m.box.querySelector("h4");t.append(s,a("div",{class:"cv-toolbar"},a("span",{class:"cv-title","data-role":"title"}),A,H.el),a("div",{class:"cv-toolbar"},a("label",{class:"cv-steer-label"},"prompt",r)),a("div",{class:"cv-toolbar"},o,a("label",{class:"cv-steer-label"},"coef",i),d),y,x,a("div",{class:"cv-row"},w.box,m.box));let u=!0,S=p=>{p.type!=="hello"||p.live!==!1||(u=!1,h())};e.on("msg:custom",S),r.addEventListener("change",()=>{e.set("prompt",r.value),e.save_changes()}),o.addEventListener("change",()=>{e.set("mode",o.value),e.save_changes()}),i.addEventListener("input",()=>l(d,c(Number(i.value),2))),i.addEventListener("change",()=>{e.set("coef",Number(i.value)),e.save_changes()});function h(){let p=e.get("coef_max"),b=e.get("mode");i.min=String(-p),i.max=String(p),i.value=String(e.get("coef")),i.disabled=b!=="add"||!u,r.disabled=o.disabled=!u,l(y,u?"":"This is a standalone export: it shows the continuations as saved. Steering with another prompt, coef or mode needs the live kernel."),l(d,b==="add"?c(e.get("coef"),2):"(unused when ablating)"),document.activeElement!==r&&(r.value=e.get("prompt")),o.value=b,l(t.querySelector('[data-role="title"]'),`Refusal steering \xB7 layer ${e.get("layer")}`),l(_,b==="add"?`After (add ${c(e.get("coef"),2)} \xD7 direction at layer ${e.get("layer")})`:"After (direction ablated at every layer)"),w.show(e.get("before")),m.show(e.get("after")),l(x,e.get("error")||""),t.setAttribute("data-busy",String(!!e.get("busy")))}h();let T="change:prompt change:coef change:mode change:coef_max change:layer change:before change:after change:busy change:error";return e.on(T,h),e.send({type:"hello"}),()=>{e.off(T,h),e.off("msg:custom",S)}}var K={render:J};export{K as default};
