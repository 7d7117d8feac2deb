// Renders GraphiQL against /graphql with the API key the console stored for this tab.
'use strict';

(() => {
  const key = sessionStorage.getItem('annals.apiKey');
  const headers = key ? { Authorization: `Bearer ${key}` } : {};
  const fetcher = GraphiQL.createFetcher({ url: '/graphql', headers });
  const root = ReactDOM.createRoot(document.getElementById('graphiql'));
  root.render(React.createElement(GraphiQL, { fetcher, defaultQuery: '{ head }\n' }));
})();
